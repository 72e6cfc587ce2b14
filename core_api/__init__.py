"""The microserving contract (types, Engine protocol, Strategy) and the engine logic both backends share.

Nothing here imports a backend or torch: a laptop simulation stays light.
"""
