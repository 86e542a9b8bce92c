"""Generate a tiny, randomly initialised Gemma 3 text model with its own tokenizer and chat template.

    <vllm venv>/bin/python tests/serving/make_tiny_gemma.py OUT_DIR

Runs in the vLLM venv (torch, transformers and tokenizers come with vLLM). Deterministic: the same
versions give byte-identical files. Takes a few seconds. The shape follows DESIGN.md section 6:
Gemma3TextConfig with hidden size 64, 2 layers (one sliding-window, one full attention), 2 heads,
1 KV head, head_dim 32 (the CPU attention backend accepts 32, 64, 80, ..., 512 only), vocab 512, bf16,
saved as Gemma3ForCausalLM (model_type gemma3_text). The tokenizer is a byte-level BPE trained on a few
sentences, with Gemma's special tokens first (ids 0-5), and a Gemma-style chat template that accepts
message content as a string or as a list of parts (vLLM passes content as parts when the template
iterates over them; a string-only template makes chat requests with a system message fail with 400).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

SPECIAL_TOKENS = ["<pad>", "<eos>", "<bos>", "<unk>", "<start_of_turn>", "<end_of_turn>"]
PAD, EOS, BOS, UNK, START_OF_TURN, END_OF_TURN = range(6)
VOCAB_SIZE = 512

CORPUS = [
    "San Francisco is a city in California, known for the Golden Gate Bridge and its steep hills.",
    "Large language models are neural networks trained on a lot of text to predict the next token.",
    "Kubernetes schedules containers onto nodes; an operator keeps a custom resource true in the cluster.",
    "Gemma is a family of lightweight open models built from the research behind Gemini.",
    "You are a helpful assistant. Tell me something about large language models.",
    "The quick brown fox jumps over the lazy dog while the cat sleeps in the warm sun.",
    "vLLM serves models behind an OpenAI compatible API: models, completions and chat completions.",
    "Describe this image. What is the capital of France? Paris is the capital of France.",
    "def add(a, b):\n    return a + b\n\nprint(add(1, 2))  # 3\n",
    "0123456789 + - * / = ( ) [ ] { } < > , . ; : ! ? ' \" @ # $ % ^ & _ ~ | \\",
]

# Gemma-style chat template. System messages are folded into the first user turn (as Gemma 3's own
# template does), the assistant role is called "model", content is a string or a list of parts.
CHAT_TEMPLATE = (
    "{{- bos_token -}}"
    "{%- set ns = namespace(system='') -%}"
    "{%- for message in messages -%}"
    "{%- set parts = namespace(text='') -%}"
    "{%- if message['content'] is string -%}"
    "{%- set parts.text = message['content'] -%}"
    "{%- else -%}"
    "{%- for item in message['content'] -%}"
    "{%- if item['type'] == 'text' -%}{%- set parts.text = parts.text + item['text'] -%}"
    "{%- elif item['type'] in ['image', 'image_url'] -%}{%- set parts.text = parts.text + '<start_of_image>' -%}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- endif -%}"
    "{%- if message['role'] == 'system' -%}"
    "{%- set ns.system = ns.system + parts.text + '\n\n' -%}"
    "{%- else -%}"
    "{%- set role = 'model' if message['role'] == 'assistant' else message['role'] -%}"
    "{{- '<start_of_turn>' + role + '\n' -}}"
    "{%- if role == 'user' -%}{{- ns.system -}}{%- set ns.system = '' -%}{%- endif -%}"
    "{{- parts.text | trim + '<end_of_turn>\n' -}}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<start_of_turn>model\n' -}}{%- endif -%}"
)


def make_tokenizer(out: Path) -> int:
    from tokenizers import (
        Tokenizer,
        decoders,
        models,
        pre_tokenizers,
        processors,
        trainers,
    )
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(CORPUS * 4, trainer=trainer)
    for i, name in enumerate(SPECIAL_TOKENS):
        assert tok.token_to_id(name) == i, (name, tok.token_to_id(name))
    # Like Gemma: <bos> in front of every encoded text (chat prompts carry it in the template instead).
    tok.post_processor = processors.TemplateProcessing(
        single="<bos> $A", pair="<bos> $A $B", special_tokens=[("<bos>", BOS)]
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<bos>",
        eos_token="<eos>",
        unk_token="<unk>",
        pad_token="<pad>",
        additional_special_tokens=["<start_of_turn>", "<end_of_turn>"],
        padding_side="left",
        model_max_length=131072,
    )
    fast.chat_template = CHAT_TEMPLATE
    fast.save_pretrained(out)
    return len(fast)


def make_model(out: Path) -> None:
    import torch
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig, GenerationConfig

    torch.manual_seed(0)
    config = Gemma3TextConfig(
        vocab_size=VOCAB_SIZE,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=32,
        query_pre_attn_scalar=32,
        max_position_embeddings=131072,
        sliding_window=512,
        layer_types=["sliding_attention", "full_attention"],
        pad_token_id=PAD,
        eos_token_id=[EOS, END_OF_TURN],
        bos_token_id=BOS,
        tie_word_embeddings=True,
        torch_dtype="bfloat16",
    )
    model = Gemma3ForCausalLM(config).to(torch.bfloat16).eval()
    model.save_pretrained(out, safe_serialization=True)
    # Gemma 3 stops at <eos> and <end_of_turn>; vLLM reads this file by default (--generation-config auto).
    GenerationConfig(bos_token_id=BOS, eos_token_id=[EOS, END_OF_TURN], pad_token_id=PAD).save_pretrained(out)


def main() -> int:
    if len(sys.argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    out = Path(sys.argv[1])
    out.mkdir(parents=True, exist_ok=True)
    n = make_tokenizer(out)
    make_model(out)
    print(json.dumps({"model_dir": str(out), "tokenizer_size": n, "vocab_size": VOCAB_SIZE}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
