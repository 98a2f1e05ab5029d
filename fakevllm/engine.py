"""Continuous-batching simulation: batch slots, a FIFO queue, KV blocks and a prefix cache."""

from __future__ import annotations

import asyncio
import re
from collections import OrderedDict, deque
from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field

BLOCK_SIZE = 16
_TOKEN_RE = re.compile(r"\w+|[^\w\s]")


def tokenize(text: str) -> list[str]:
    """Crude tokenizer: a BOS marker, then one token per word or punctuation mark."""
    return ["<s>", *_TOKEN_RE.findall(text)]


def block_hashes(tokens: Sequence[Hashable], salt: str | None = None) -> list[int]:
    """Hash each full block chained to its parent, as vLLM's prefix caching does."""
    parent = hash(("salt", salt)) if salt else 0
    hashes = []
    for start in range(0, len(tokens) - BLOCK_SIZE + 1, BLOCK_SIZE):
        parent = hash((parent, tuple(tokens[start : start + BLOCK_SIZE])))
        hashes.append(parent)
    return hashes


def blocks_for(num_tokens: int) -> int:
    return -(-num_tokens // BLOCK_SIZE)


@dataclass(eq=False)
class Seq:
    """One sequence in the engine; `wake` is set whenever its state moves."""

    prompt_len: int
    max_tokens: int
    hashes: list[int]
    wake: asyncio.Event
    generated: int = 0
    prefilled: bool = False
    done: bool = False
    aborted: bool = False
    cached_tokens: int = 0
    held: list[int] = field(default_factory=list)
    private_blocks: int = 0


class KVCache:
    """KV blocks: hashed blocks are shared and, once unreferenced, kept as an LRU cache."""

    def __init__(self, num_blocks: int) -> None:
        self.num_blocks = num_blocks
        self._refs: dict[int, int] = {}
        # Unreferenced but still resident blocks, oldest first: what prefix hits come from.
        self._lru: OrderedDict[int, None] = OrderedDict()
        self._private = 0

    @property
    def used(self) -> int:
        return len(self._refs) + self._private

    def usage(self) -> float:
        return self.used / self.num_blocks

    def cached_prefix(self, hashes: list[int], limit: int) -> int:
        """Number of leading blocks already resident."""
        n = 0
        for h in hashes[:limit]:
            if h not in self._refs and h not in self._lru:
                break
            n += 1
        return n

    def allocate(self, seq: Seq, n_hit: int) -> bool:
        """Reserve blocks for the whole sequence (prompt + output) up front, or fail."""
        total = blocks_for(seq.prompt_len + seq.max_tokens)
        hit = seq.hashes[:n_hit]
        revived = sum(1 for h in hit if h in self._lru)
        if self.used + revived + (total - n_hit) > self.num_blocks:
            return False
        for h in hit:
            if h in self._refs:
                self._refs[h] += 1
            else:
                del self._lru[h]
                self._refs[h] = 1
        fresh = [h for h in seq.hashes[n_hit:] if h not in self._refs and h not in self._lru]
        for h in fresh:
            self._refs[h] = 1
        seq.held = hit + fresh
        seq.private_blocks = total - len(seq.held)
        self._private += seq.private_blocks
        while self.used + len(self._lru) > self.num_blocks:
            self._lru.popitem(last=False)
        return True

    def free(self, seq: Seq) -> None:
        self._private -= seq.private_blocks
        # Tail blocks go in first so they are evicted first, keeping shared prefixes longest.
        for h in reversed(seq.held):
            self._refs[h] -= 1
            if not self._refs[h]:
                del self._refs[h]
                self._lru[h] = None
        seq.held, seq.private_blocks = [], 0


@dataclass
class EngineCounters:
    prompt_tokens: int = 0
    generation_tokens: int = 0
    prefix_queries: int = 0
    prefix_hits: int = 0
    finished: dict[str, int] = field(default_factory=lambda: {"stop": 0, "length": 0, "abort": 0})


class Engine:
    """Steps every running sequence together, one token per step, admitting from a FIFO queue."""

    def __init__(
        self,
        *,
        max_num_seqs: int = 16,
        kv_tokens: int = 16 * 4096,
        step_time: float = 0.02,
        prefill_time_per_token: float = 0.0002,
        speed: float = 1.0,
    ) -> None:
        if speed <= 0 or max_num_seqs < 1 or kv_tokens < BLOCK_SIZE:
            raise ValueError("speed must be > 0, max_num_seqs >= 1, kv_tokens >= 16")
        self.max_num_seqs = max_num_seqs
        self.kv = KVCache(kv_tokens // BLOCK_SIZE)
        self.step_time = step_time
        self.prefill_time_per_token = prefill_time_per_token
        self.speed = speed
        self.slowdown = 1.0
        self.paused = False
        self.waiting: deque[Seq] = deque()
        self.running: list[Seq] = []
        self.counters = EngineCounters()
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    @property
    def instant(self) -> bool:
        return self.step_time == 0 and self.prefill_time_per_token == 0

    def start(self) -> None:
        self._wakeup = asyncio.Event()  # a fresh one: events bind to the loop that first waits
        self._task = asyncio.get_running_loop().create_task(self._loop())

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        for seq in [*self.waiting, *self.running]:
            self.abort(seq)

    def set_paused(self, paused: bool) -> None:
        self.paused = paused
        self._wakeup.set()

    def submit(self, seq: Seq) -> None:
        # Zero-cost fast path for overhead benchmarks: no queue, no loop round trip.
        if self.instant and not self.paused and not self.waiting and self._try_admit(seq):
            seq.prefilled = True
            self._emit(seq, seq.max_tokens)
            self._finish(seq)
            return
        self.waiting.append(seq)
        self._wakeup.set()

    def abort(self, seq: Seq) -> None:
        if seq.done:
            return
        if seq in self.running:
            self.running.remove(seq)
            self.kv.free(seq)
        else:
            self.waiting.remove(seq)
        seq.done = seq.aborted = True
        self.counters.finished["abort"] += 1
        seq.wake.set()

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time()
        while True:
            if self.paused or not (self.running or self.waiting):
                self._wakeup.clear()
                await self._wakeup.wait()
                deadline = loop.time()
                continue
            prefill_tokens = self._admit()
            step = self.step_time + prefill_tokens * self.prefill_time_per_token
            # Absolute deadlines keep the token rate exact despite loop wake-up jitter.
            deadline = max(deadline + step * self.slowdown / self.speed, loop.time())
            await asyncio.sleep(deadline - loop.time())
            if not self.paused:
                self._advance()

    def _admit(self) -> int:
        """Move sequences from the queue head into free slots; return uncached prompt tokens."""
        prefill_tokens = 0
        while self.waiting and len(self.running) < self.max_num_seqs:
            seq = self.waiting[0]
            if not self._try_admit(seq):
                break  # FIFO: the head blocks the queue until KV frees up
            self.waiting.popleft()
            self.running.append(seq)
            prefill_tokens += seq.prompt_len - seq.cached_tokens
        return prefill_tokens

    def _try_admit(self, seq: Seq) -> bool:
        # At least one prompt token is always recomputed, as in vLLM.
        n_hit = self.kv.cached_prefix(seq.hashes, (seq.prompt_len - 1) // BLOCK_SIZE)
        if not self.kv.allocate(seq, n_hit):
            return False
        seq.cached_tokens = n_hit * BLOCK_SIZE
        c = self.counters
        c.prefix_queries += seq.prompt_len
        c.prefix_hits += seq.cached_tokens
        c.prompt_tokens += seq.prompt_len
        return True

    def _advance(self) -> None:
        finished = []
        for seq in self.running:
            seq.prefilled = True
            self._emit(seq, min(1, seq.max_tokens - seq.generated))
            if seq.generated >= seq.max_tokens:
                finished.append(seq)
        for seq in finished:
            self.running.remove(seq)
            self._finish(seq)

    def _emit(self, seq: Seq, n: int) -> None:
        seq.generated += n
        self.counters.generation_tokens += n
        seq.wake.set()

    def _finish(self, seq: Seq) -> None:
        self.kv.free(seq)
        seq.done = True
        self.counters.finished["length" if seq.max_tokens else "stop"] += 1
        seq.wake.set()
