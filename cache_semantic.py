"""The semantic layer of the LLM cache (``cache_similarity`` below 1): which stored answer a
paraphrased request may take.

It follows NOMYO Router's semantic cache as its documentation describes it:

- **Namespace.** A request's namespace is a hash of its route, model, system prompt (every
  ``system`` and ``developer`` message, in order) and the options that change the answer
  (the tenant among them). A semantic hit only ever comes from the request's own namespace,
  so another system prompt, model, tool set, temperature or tenant never matches.
- **Query vector.** The normalised weighted mean of the last user message's embedding
  (weight ``1 - cache_history_weight``) and the earlier conversation's (weight
  ``cache_history_weight``). NOMYO Router weights the history's terms by BM25; here each of
  the last :data:`HISTORY_MESSAGES` earlier messages is embedded on its own and weighted by
  recency, the newest weighing most and each older one half the one after it, so the turn
  that leads to the question counts most and a long conversation's start fades out. (Every
  message is embedded once: a growing conversation only embeds its new messages.)
- **Match.** The stored entry of the namespace whose vector is nearest (cosine) to the query,
  when that similarity is at least ``cache_similarity``. An exact key match is always tried
  first (``cache.py``).
- **Only plain text conversations** take part: a message with an image, file or audio
  part, a tool call or a tool result, or a conversation that does not end with a user
  message, is matched exactly or not at all (its text alone does not say what was asked).
- **Personal data.** An answer whose text holds an e-mail address, a UUID or a run of 8 or
  more digits (account numbers, customer ids, phone numbers) is stored without a vector: the
  identical request still finds it, a merely similar one never does, so no paraphrase from
  another user of the same tenant and system prompt receives it. (NOMYO Router also looks
  for names in ``[Tags: identity]`` lines of the system prompt; here the system prompt is in
  the namespace and the tenant in the options, so only the three patterns are kept.)

Embedding runs in one worker thread (``embedding.Encoder``, numpy), never on the event
loop; recent texts' vectors are remembered, so a miss and the write that follows embed once.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Iterable

import numpy as np
import orjson

from embedding import Encoder

__all__ = ["SemanticIndex", "Probe", "Conversation", "conversation", "holds_personal_data", "namespace",
           "HISTORY_MESSAGES"]

#: The earlier messages of a conversation that make its history vector (the newest ones).
HISTORY_MESSAGES = 6
#: Vectors of recent texts kept (by a hash of the text), so a lookup and the write of its answer
#: embed once.
_REMEMBERED = 2048
#: Characters of a text the encoder is given: far past its 256 word pieces, so the vector is the
#: same, and a huge message costs no more than this to tokenize.
_MAX_TEXT_CHARS = 8192
_TEXT_PARTS = frozenset({"text", "input_text", "output_text"})
#: Bounded repeats (RFC 5321's lengths) keep the search linear in the answer's length.
_PERSONAL = re.compile(r"[\w.%+-]{1,64}@[\w-]{1,63}(?:\.[\w-]{1,63}){0,8}\.[A-Za-z]{2,24}"  # e-mail
                       r"|\b[0-9a-fA-F]{8}-(?:[0-9a-fA-F]{4}-){3}[0-9a-fA-F]{12}\b"   # UUID
                       r"|(?<![\d.])\d{8,}(?![\d.])")                                  # long digit run
_ANSWER_TEXT_FIELDS = frozenset({"text", "content", "arguments", "refusal"})


def _digest(text: str) -> bytes:
    """The key a text's vector is remembered by."""
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).digest()


@dataclass(frozen=True)
class Conversation:
    """A plain text conversation: its system prompt, its earlier messages' texts (oldest
    first) and its last user message."""

    system: str
    history: list[str]
    question: str


@dataclass(frozen=True)
class Probe:
    """Where a request sits in the semantic index: its ``namespace`` and its query ``vector``
    (float32 bytes, unit length)."""

    namespace: str
    vector: bytes


def _text(content: Any) -> str | None:
    """The text of a message's ``content`` (a string or a list of text parts), or None when it
    holds anything else (an image, a file, audio)."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = []
        for part in content:
            if not isinstance(part, dict) or part.get("type") not in _TEXT_PARTS or not isinstance(part.get("text"), str):
                return None
            texts.append(part["text"])
        return "\n".join(texts)
    return None


def conversation(messages: list) -> Conversation | None:
    """``messages`` (Chat Completions messages, Responses message items, ``{"prompt": ...}`` of
    a text completion, ``{"instructions": ...}`` of a native turn) as a :class:`Conversation`;
    None when one is not plain text or the last message is not the user's."""
    system: list[str] = []
    turns: list[tuple[str, str]] = []
    for message in messages if isinstance(messages, list) else []:
        if not isinstance(message, dict):
            return None
        if set(message) == {"instructions"}:
            if message["instructions"] is not None:
                if not isinstance(message["instructions"], str):
                    return None
                system.append(message["instructions"])
            continue
        if set(message) == {"prompt"}:
            if not isinstance(message["prompt"], str):
                return None
            turns.append(("user", message["prompt"]))
            continue
        role = message.get("role")
        if message.get("type", "message") != "message" or message.get("tool_calls") or message.get("function_call") \
                or role not in ("system", "developer", "user", "assistant"):
            return None
        text = _text(message.get("content"))
        if text is None:
            return None
        if role in ("system", "developer"):
            system.append(text)
        else:
            turns.append((role, text))
    if not turns or turns[-1][0] != "user" or not turns[-1][1].strip():
        return None
    return Conversation("\n".join(system), [text for _, text in turns[:-1] if text.strip()], turns[-1][1])


def holds_personal_data(value: bytes) -> bool:
    """Whether the answer ``value`` (a Response object, a chat or text completion, as JSON) has
    an e-mail address, a UUID or a run of 8+ digits in its text. An answer that is not JSON
    counts as personal (nothing is known of it)."""
    try:
        data = orjson.loads(value)
    except orjson.JSONDecodeError:
        return True
    stack, texts = [data], []
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            for key, item in node.items():
                if key in _ANSWER_TEXT_FIELDS and isinstance(item, str):
                    texts.append(item)
                elif isinstance(item, (dict, list)):
                    stack.append(item)
        elif isinstance(node, list):
            stack.extend(node)
    return any(_PERSONAL.search(text) for text in texts)


def namespace(route: str, model: str, system: str, options: dict | None) -> str:
    """The namespace of a request: a hash of its route, model, system prompt and options."""
    blob = orjson.dumps([route, model, system, options or {}], option=orjson.OPT_SORT_KEYS)
    return hashlib.sha256(blob).hexdigest()[:32]


class SemanticIndex:
    """The matching rules of the semantic cache over an :class:`embedding.Encoder`.

    ``similarity`` is the least cosine similarity of a hit (below 1); ``history_weight``
    the share of the earlier conversation in the query vector (0..1). The cache backends
    keep each entry's namespace and vector; this class makes them (:meth:`probe`), decides
    whether an answer may have one (:meth:`shareable`) and ranks the candidates
    (:meth:`ranked`). Call :meth:`close` to stop its worker thread.
    """

    def __init__(self, encoder: Encoder, similarity: float, history_weight: float):
        self.encoder = encoder
        self.similarity = similarity
        self.history_weight = history_weight
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="nomyo-encoder")
        self._remembered: OrderedDict[str, np.ndarray] = OrderedDict()

    async def _run(self, function: Any, *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._thread, function, *args)

    async def embed(self, texts: list[str]) -> np.ndarray:
        """Unit vectors of ``texts`` (``(n, 384)`` float32), those not remembered encoded in one
        batch on the worker thread."""
        cut = {_digest(text): text[:_MAX_TEXT_CHARS] for text in texts}
        keys = list(cut)
        wanted = [key for key in keys if key not in self._remembered]
        if wanted:
            for key, vector in zip(wanted, await self._run(self.encoder.encode, [cut[key] for key in wanted])):
                self._remembered[key] = vector
                while len(self._remembered) > _REMEMBERED:
                    self._remembered.popitem(last=False)
        vectors = []
        for key in (_digest(text) for text in texts):
            vector = self._remembered.get(key)
            if vector is None:  # forgotten meanwhile (many concurrent requests): encode it again
                vector = (await self._run(self.encoder.encode, [cut[key]]))[0]
            else:
                self._remembered.move_to_end(key)
            vectors.append(vector)
        return np.stack(vectors)

    async def shareable_answer(self, value: bytes) -> bool:
        """:meth:`shareable`, on the worker thread (a long answer is searched off the event loop)."""
        return await self._run(self.shareable, value)

    def query_vector(self, question: np.ndarray, history: np.ndarray) -> np.ndarray:
        """The query vector of a question's and its earlier messages' vectors (oldest first):
        see the module docstring. Unit length, float32."""
        combined = question.astype(np.float32)
        if len(history) and self.history_weight > 0:
            weights = 0.5 ** np.arange(len(history) - 1, -1, -1, dtype=np.float32)
            context = (history * weights[:, None]).sum(axis=0)
            context /= max(float(np.linalg.norm(context)), 1e-12)
            combined = (1.0 - self.history_weight) * combined + self.history_weight * context
        return (combined / max(float(np.linalg.norm(combined)), 1e-12)).astype(np.float32)

    async def probe(self, route: str, model: str, messages: list, options: dict | None) -> Probe | None:
        """The request's namespace and query vector, or None when it cannot be matched by
        meaning (not a plain text conversation)."""
        talk = conversation(messages)
        if talk is None:
            return None
        history = talk.history[-HISTORY_MESSAGES:]
        vectors = await self.embed([talk.question, *history])
        vector = self.query_vector(vectors[0], vectors[1:])
        return Probe(namespace(route, model, talk.system, options), vector.tobytes())

    @staticmethod
    def shareable(value: bytes) -> bool:
        """Whether the answer ``value`` may be found by similar requests (it holds no personal data)."""
        return not holds_personal_data(value)

    def _rank(self, rows: list[tuple[Any, bytes]], query: bytes) -> list[tuple[Any, float]]:
        width = len(query)
        rows = [(key, vector) for key, vector in rows if isinstance(vector, (bytes, bytearray)) and len(vector) == width]
        if not rows:
            return []
        matrix = np.frombuffer(b"".join(vector for _, vector in rows), dtype=np.float32).reshape(len(rows), -1)
        scores = matrix @ np.frombuffer(query, dtype=np.float32)
        order = np.argsort(-scores)
        return [(rows[i][0], float(scores[i])) for i in order if scores[i] >= self.similarity]

    async def ranked(self, rows: Iterable[tuple[Any, bytes]], query: bytes) -> list[tuple[Any, float]]:
        """The ``(key, vector)`` rows whose cosine similarity to ``query`` is at least
        ``similarity``, best first, as ``(key, similarity)`` (run on the worker thread)."""
        rows = list(rows)
        if not rows:
            return []
        return await self._run(self._rank, rows, query)

    def close(self) -> None:
        """Stop the worker thread (an encoding under way finishes on its own)."""
        self._thread.shutdown(wait=False, cancel_futures=True)
