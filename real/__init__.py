"""Real backend: torch Llama-family model, paged KV attention, engine processes and KV transfer."""
