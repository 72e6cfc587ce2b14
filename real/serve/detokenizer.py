"""Token ids -> text deltas for streaming, with OpenAI `stop` strings.

Why incremental and windowed: a token can end inside a multi-byte character (byte-level BPE, and
every id of the tiny model's byte tokenizer), so decoding a token on its own can give U+FFFD where
the full text has a real character. As vLLM does, each step decodes a short window of recent ids
and emits only text that no later token can change (not ending in U+FFFD); `flush` emits the rest
at the end. The window starts where the last emitted text ended, a character boundary, so the
concatenated deltas equal `decode(all ids)` and streamed text equals the non-streamed text.

Stop strings are cut out (OpenAI excludes them from the text) and the text that could still be the
start of one is held back, so a client never sees text that turns out to be part of a stop string.
"""
from __future__ import annotations

REPLACEMENT = "\ufffd"


class TextStream:
    def __init__(self, tokenizer, stop: list[str] | tuple[str, ...] = (), skip_special_tokens: bool = True) -> None:
        self.tokenizer = tokenizer
        self.stop = tuple(stop)
        self.skip = skip_special_tokens
        self.ids: list[int] = []
        self._prefix = 0  # ids[_prefix:_read] decode to text already in self.text
        self._read = 0
        self.text = ""  # stable text so far (cut at a stop string once one is found)
        self._sent = 0  # characters of self.text handed out
        self.stopped = False  # a stop string was found; nothing more will be emitted

    def push(self, token_ids: list[int]) -> str:
        """Add tokens; return the text that is now safe to show (may be empty)."""
        if self.stopped:
            return ""
        self.ids.extend(token_ids)
        self._advance(final=False)
        return self._take()

    def flush(self) -> str:
        """The stream ended: return everything not yet shown (partial characters included)."""
        if not self.stopped:
            self._advance(final=True)
        return self._take(final=True)

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=self.skip)

    def _advance(self, final: bool) -> None:
        if len(self.ids) == self._read:
            return
        done = self._decode(self.ids[self._prefix:self._read])
        now = self._decode(self.ids[self._prefix:])
        if len(now) > len(done) and (final or not now.endswith(REPLACEMENT)):
            self.text += now[len(done):]
            self._prefix, self._read = self._read, len(self.ids)

    def _take(self, final: bool = False) -> str:
        end = len(self.text)
        if self.stop and not self.stopped:
            hits = [i for i in (self.text.find(s, self._sent) for s in self.stop) if i >= 0]
            if hits:
                self.text, self.stopped = self.text[:min(hits)], True
                end = len(self.text)
            elif not final:
                end -= self._held_back()
        out, self._sent = self.text[self._sent:end], max(self._sent, end)
        return out

    def _held_back(self) -> int:
        """Length of the longest tail of the unsent text that starts some stop string."""
        tail = self.text[self._sent:]
        best = 0
        for s in self.stop:
            for k in range(min(len(s) - 1, len(tail)), best, -1):
                if tail.endswith(s[:k]):
                    best = k
                    break
        return best
