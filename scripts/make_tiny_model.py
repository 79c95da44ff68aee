#!/usr/bin/env python3
"""Write a tiny, fully deterministic GGUF model whose replies are scripted.

Usage: python scripts/make_tiny_model.py OUT.gguf

The model is a llama-architecture network built as a bigram machine:

* token embeddings are one-hot vectors (n_embd >= vocabulary size);
* the single transformer block adds nothing to the residual stream (its
  attention output and FFN down projections are zero);
* the output matrix maps every token to exactly one successor token with a
  very large logit margin, so greedy decoding and any usual sampling settings
  produce the same continuation.

The next token therefore depends only on the current token.  The chat template
stored in the GGUF renders the conversation in a ChatML/Hermes layout and ends
the prompt with a "mode" control token chosen from the request; the bigram
chain starting at that mode token is the scripted reply.

Modes, in order of precedence, chosen when a generation prompt is requested:

* last message has role ``tool``             -> ``TOOL_RESULT_REPLY``
* last user message contains ``[long]``      -> "la la la ..." forever
* last user message contains ``[think]``     -> ``<think>THINK_REASONING</think>DEFAULT_REPLY``
* last message is user and the offered tools
  include ``get_weather`` with a ``city``
  property                                   -> one Hermes ``<tool_call>`` (``TOOL_CALL_TEXT``)
* anything else                              -> ``DEFAULT_REPLY``

Every reply ends with ``<|im_end|>`` (end of generation), except ``[long]``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import gguf

DEFAULT_REPLY = "Hello from the tiny model."
THINK_REASONING = "Let me think about it."
TOOL_RESULT_REPLY = "The weather tool has answered."
LONG_UNIT = " la"
TOOL_NAME = "get_weather"
TOOL_ARGUMENTS = {"city": "Paris"}
TOOL_CALL_TEXT = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'

CONTEXT_LENGTH = 16384
N_HEAD = 4
N_HEAD_KV = 1
N_FF = 64
LOGIT_SCALE = 16.0
RMS_EPS = 1e-5

# Control tokens: rendered only by the chat template, never produced as text.
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
MODES = ("default", "think", "long", "tool", "tool_result")
MODE_TOKENS = {mode: f"<|mode_{mode}|>" for mode in MODES}

# Scripted replies as token chains; each piece is one token of the vocabulary.
CHAINS: dict[str, list[str]] = {
    "default": ["Hello", " from", " the", " tiny", " model.", IM_END],
    "think": ["<think>", "Let", " me", " think", " about", " it.", "</think>", "Hello"],
    "long": ["la", LONG_UNIT, LONG_UNIT],
    "tool": [
        "<tool_call>",
        '\n{"name": "',
        TOOL_NAME,
        '", "arguments": ',
        '{"city": "',
        "Paris",
        '"}}\n',
        "</tool_call>",
        IM_END,
    ],
    "tool_result": ["The", " weather", " tool", " has", " answered.", IM_END],
}

# Markup tokens the template uses; kept whole so prompts stay short.
EXTRA_USER_DEFINED = ["<tool_response>", "</tool_response>", "<tools>", "</tools>"]

CHAT_TEMPLATE = r"""{#- Tiny scripted model: ChatML turns, Hermes-style tools and tool calls. -#}
{%- if tools %}
    {{- '<|im_start|>system\n' }}
    {%- if messages[0].role == 'system' %}
        {{- messages[0].content + '\n\n' }}
    {%- endif %}
    {{- '# Tools\n\nThe following functions are available, one JSON signature per line inside <tools></tools>:\n<tools>' }}
    {%- for tool in tools %}
        {{- '\n' }}
        {{- tool | tojson }}
    {%- endfor %}
    {{- '\n</tools>\n\nTo call a function, answer with a JSON object holding the keys "name" and "arguments", placed between <tool_call> and </tool_call>.<|im_end|>\n' }}
{%- elif messages and messages[0].role == 'system' %}
    {{- '<|im_start|>system\n' + messages[0].content + '<|im_end|>\n' }}
{%- endif %}
{%- for message in messages %}
    {%- if message.role == 'system' %}
        {%- if not loop.first %}
            {{- '<|im_start|>system\n' + message.content + '<|im_end|>\n' }}
        {%- endif %}
    {%- elif message.role == 'user' %}
        {{- '<|im_start|>user\n' + message.content + '<|im_end|>\n' }}
    {%- elif message.role == 'assistant' %}
        {{- '<|im_start|>assistant\n' }}
        {%- if message.reasoning_content %}
            {{- '<think>\n' + message.reasoning_content + '\n</think>\n\n' }}
        {%- endif %}
        {%- if message.content %}
            {{- message.content }}
        {%- endif %}
        {%- if message.tool_calls %}
            {%- for call in message.tool_calls %}
                {%- if call.function is defined %}
                    {%- set fn = call.function %}
                {%- else %}
                    {%- set fn = call %}
                {%- endif %}
                {%- if message.content or not loop.first %}
                    {{- '\n' }}
                {%- endif %}
                {{- '<tool_call>\n{"name": "' + fn.name + '", "arguments": ' }}
                {%- if fn.arguments is string %}
                    {{- fn.arguments }}
                {%- else %}
                    {{- fn.arguments | tojson }}
                {%- endif %}
                {{- '}\n</tool_call>' }}
            {%- endfor %}
        {%- endif %}
        {{- '<|im_end|>\n' }}
    {%- elif message.role == 'tool' %}
        {%- if loop.first or messages[loop.index0 - 1].role != 'tool' %}
            {{- '<|im_start|>user' }}
        {%- endif %}
        {{- '\n<tool_response>\n' + message.content + '\n</tool_response>' }}
        {%- if loop.last or messages[loop.index0 + 1].role != 'tool' %}
            {{- '<|im_end|>\n' }}
        {%- endif %}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {%- set ns = namespace(mode='default') %}
    {%- if messages %}
        {%- set last = messages[(messages | length) - 1] %}
        {%- if last.role == 'tool' %}
            {%- set ns.mode = 'tool_result' %}
        {%- elif last.role == 'user' %}
            {%- if last.content is string and '[long]' in last.content %}
                {%- set ns.mode = 'long' %}
            {%- elif last.content is string and '[think]' in last.content %}
                {%- set ns.mode = 'think' %}
            {%- else %}
                {%- for tool in tools or [] %}
                    {%- set fn = tool.function if tool.function is defined else tool %}
                    {%- if fn.name == 'get_weather' and fn.parameters is defined and fn.parameters.properties is defined and 'city' in fn.parameters.properties %}
                        {%- set ns.mode = 'tool' %}
                    {%- endif %}
                {%- endfor %}
            {%- endif %}
        {%- endif %}
    {%- endif %}
    {{- '<|im_start|>assistant\n<|mode_' + ns.mode + '|>' }}
{%- endif %}
"""


def build_vocab() -> tuple[list[str], list[int]]:
    """Return the token texts and their GGUF token types, in id order."""
    tokens: list[str] = ["<unk>", "<s>", "</s>"]
    types: list[int] = [gguf.TokenType.UNKNOWN, gguf.TokenType.CONTROL, gguf.TokenType.CONTROL]
    tokens += [f"<0x{b:02X}>" for b in range(256)]
    types += [gguf.TokenType.BYTE] * 256
    # The SentencePiece space marker, so plain spaces do not need byte fallback.
    tokens.append("\u2581")
    types.append(gguf.TokenType.NORMAL)
    for text in [IM_START, IM_END, *MODE_TOKENS.values()]:
        tokens.append(text)
        types.append(gguf.TokenType.CONTROL)
    for chain in CHAINS.values():
        for piece in chain:
            if piece not in tokens:
                tokens.append(piece)
                types.append(gguf.TokenType.USER_DEFINED)
    for piece in EXTRA_USER_DEFINED:
        if piece not in tokens:
            tokens.append(piece)
            types.append(gguf.TokenType.USER_DEFINED)
    return tokens, [int(t) for t in types]


def build_successors(tokens: list[str]) -> list[int]:
    """Return, for every token id, the id of the token that must follow it.

    Tokens outside the scripted chains are followed by ``<|im_end|>``, so an
    unexpected prompt ending produces an empty reply instead of noise.
    """
    ids = {text: i for i, text in enumerate(tokens)}
    end = ids[IM_END]
    successor = [end] * len(tokens)
    assigned: dict[int, int] = {}
    for mode, chain in CHAINS.items():
        path = [MODE_TOKENS[mode], *chain]
        for current, following in zip(path, path[1:]):
            cur, nxt = ids[current], ids[following]
            if assigned.get(cur, nxt) != nxt:
                raise ValueError(f"token {current!r} would need two different successors")
            assigned[cur] = nxt
            successor[cur] = nxt
    return successor


def scripted_text(mode: str, limit: int = 64) -> str:
    """Return the text the model produces after MODE's control token (up to LIMIT tokens)."""
    tokens, _ = build_vocab()
    successor = build_successors(tokens)
    ids = {text: i for i, text in enumerate(tokens)}
    current = ids[MODE_TOKENS[mode]]
    pieces: list[str] = []
    for _ in range(limit):
        current = successor[current]
        if tokens[current] == IM_END:
            break
        pieces.append(tokens[current])
    return "".join(pieces)


def check_script() -> None:
    """Raise AssertionError unless the token chains spell the documented replies."""
    expected = {
        "default": DEFAULT_REPLY,
        "think": f"<think>{THINK_REASONING}</think>{DEFAULT_REPLY}",
        "tool": TOOL_CALL_TEXT,
        "tool_result": TOOL_RESULT_REPLY,
    }
    for mode, text in expected.items():
        actual = scripted_text(mode)
        assert actual == text, f"mode {mode}: {actual!r} != {text!r}"
    assert scripted_text("long", 4) == "la" + LONG_UNIT * 3
    call = json.loads(TOOL_CALL_TEXT.removeprefix("<tool_call>").removesuffix("</tool_call>"))
    assert call == {"name": TOOL_NAME, "arguments": TOOL_ARGUMENTS}, call


def build_tensors(n_vocab: int, successor: list[int]) -> dict[str, np.ndarray]:
    """Return the model tensors keyed by GGUF tensor name (numpy row-major shapes)."""
    n_embd = ((n_vocab + 63) // 64) * 64
    head_dim = n_embd // N_HEAD
    n_embd_kv = head_dim * N_HEAD_KV

    embeddings = np.zeros((n_vocab, n_embd), dtype=np.float32)
    embeddings[np.arange(n_vocab), np.arange(n_vocab)] = 1.0

    output = np.zeros((n_vocab, n_embd), dtype=np.float32)
    output[np.asarray(successor), np.arange(n_vocab)] = LOGIT_SCALE

    ones = np.ones(n_embd, dtype=np.float32)
    return {
        "token_embd.weight": embeddings,
        "output_norm.weight": ones,
        "output.weight": output,
        "blk.0.attn_norm.weight": ones.copy(),
        "blk.0.attn_q.weight": np.zeros((n_embd, n_embd), dtype=np.float16),
        "blk.0.attn_k.weight": np.zeros((n_embd_kv, n_embd), dtype=np.float16),
        "blk.0.attn_v.weight": np.zeros((n_embd_kv, n_embd), dtype=np.float16),
        "blk.0.attn_output.weight": np.zeros((n_embd, n_embd), dtype=np.float16),
        "blk.0.ffn_norm.weight": ones.copy(),
        "blk.0.ffn_gate.weight": np.zeros((N_FF, n_embd), dtype=np.float16),
        "blk.0.ffn_up.weight": np.zeros((N_FF, n_embd), dtype=np.float16),
        "blk.0.ffn_down.weight": np.zeros((n_embd, N_FF), dtype=np.float16),
    }


def write_model(path: Path) -> None:
    """Write the scripted model to PATH as a GGUF file."""
    check_script()
    tokens, types = build_vocab()
    successor = build_successors(tokens)
    tensors = build_tensors(len(tokens), successor)
    n_embd = tensors["token_embd.weight"].shape[1]
    ids = {text: i for i, text in enumerate(tokens)}

    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_name("nomyo-tiny-scripted")
    writer.add_context_length(CONTEXT_LENGTH)
    writer.add_embedding_length(n_embd)
    writer.add_block_count(1)
    writer.add_feed_forward_length(N_FF)
    writer.add_head_count(N_HEAD)
    writer.add_head_count_kv(N_HEAD_KV)
    writer.add_rope_dimension_count(n_embd // N_HEAD)
    writer.add_layer_norm_rms_eps(RMS_EPS)
    writer.add_vocab_size(len(tokens))
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_F16)

    writer.add_tokenizer_model("llama")
    writer.add_token_list(tokens)
    writer.add_token_scores([0.0] * len(tokens))
    writer.add_token_types(types)
    writer.add_unk_token_id(ids["<unk>"])
    writer.add_bos_token_id(ids["<s>"])
    writer.add_eos_token_id(ids[IM_END])
    writer.add_eot_token_id(ids[IM_END])
    writer.add_add_bos_token(False)
    writer.add_add_eos_token(False)
    writer.add_add_space_prefix(False)
    writer.add_chat_template(CHAT_TEMPLATE)

    for name, data in tensors.items():
        writer.add_tensor(name, data)

    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def main(argv: list[str]) -> int:
    """Command-line entry point: write the model to the path given in ARGV."""
    if len(argv) != 2 or argv[1] in ("-h", "--help"):
        print(__doc__.strip().splitlines()[2], file=sys.stderr)
        return 2
    out = Path(argv[1])
    out.parent.mkdir(parents=True, exist_ok=True)
    write_model(out)
    print(f"wrote {out} ({out.stat().st_size} bytes)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
