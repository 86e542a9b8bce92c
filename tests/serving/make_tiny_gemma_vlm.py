"""Generate a tiny, randomly initialised Gemma 3 vision-language model (Gemma3ForConditionalGeneration).

    <vllm venv>/bin/python tests/serving/make_tiny_gemma_vlm.py OUT_DIR

The sibling of make_tiny_gemma.py (the text model), with the same language model shape, tokenizer corpus and
chat template, plus what gemma-3-4b-it has for images:

- a SigLIP vision tower (SiglipVisionConfig) of 64x64 pixel images in 8x8 patches (64 patches), hidden size 64,
  2 layers, 2 heads; the multi-modal projector pools the 8x8 patch grid to 4x4: MM_TOKENS_PER_IMAGE = 16 soft
  tokens per image (gemma-3-4b-it: 896 px, patch 14, 256 tokens);
- the image tokens in the tokenizer, as in Gemma's: <start_of_image> (what the chat template writes for an
  image part), <end_of_image> and <image_soft_token> (16 of them stand for the image's embeddings), named by
  the tokenizer's boi_token / eoi_token / image_token and by the config's *_token_index;
- the newline tokens "\\n" .. "\\n\\n\\n\\n" as added tokens whose text is the newlines themselves: vLLM's Gemma 3
  processor looks them up by text in the vocabulary (a byte-level BPE spells them "Ċ");
- preprocessor_config.json (Gemma3ImageProcessor: resize to 64x64, normalise with mean and std 0.5, no pan
  and scan) and processor_config.json (Gemma3Processor, image_seq_length 16), which vLLM loads with
  transformers' AutoProcessor.

bf16, checkpoint keys as transformers >= 4.52 saves them (model.language_model.*, model.vision_tower.*,
model.multi_modal_projector.*), which vLLM's Gemma3ForConditionalGeneration maps. Deterministic; a few seconds.
"""

from __future__ import annotations

import json
import struct
import sys
import zlib
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import make_tiny_gemma as text

IMAGE_TOKENS = ["<start_of_image>", "<end_of_image>", "<image_soft_token>"]
BOI, EOI, IMAGE_SOFT = range(len(text.SPECIAL_TOKENS), len(text.SPECIAL_TOKENS) + len(IMAGE_TOKENS))
NEWLINES = ["\n" * n for n in (4, 3, 2, 1)]
VOCAB_SIZE = text.VOCAB_SIZE  # the trained BPE plus the newline tokens
IMAGE_SIZE = 64
PATCH_SIZE = 8
MM_TOKENS_PER_IMAGE = 16  # a square; (IMAGE_SIZE / PATCH_SIZE) ** 0.5 must divide by its root (8 / 4)

# What one image adds to the prompt of the same text without it: the template writes <start_of_image>, which
# vLLM expands into "\n\n<start_of_image>" + MM_TOKENS_PER_IMAGE x <image_soft_token> + "<end_of_image>\n\n"
# (Gemma3Processor's full_image_sequence). That is <start_of_image>, the soft tokens, <end_of_image> and the
# "\n\n" after; the "\n\n" before joins the "\n" ahead of it into one "\n\n\n" token (as Gemma's tokenizer
# would have it).
TOKENS_PER_IMAGE = MM_TOKENS_PER_IMAGE + 3


def png(width: int = 40, height: int = 30) -> bytes:
    """A real PNG (8-bit RGB, a colour gradient), made by hand: signature, IHDR, IDAT, IEND with CRCs."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    rows = b"".join(
        b"\x00" + bytes(v for x in range(width) for v in (x * 255 // width, y * 255 // height, 128))
        for y in range(height)
    )
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")


def make_tokenizer():  # -> PreTrainedTokenizerFast
    from tokenizers import (
        AddedToken,
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
        vocab_size=VOCAB_SIZE - len(NEWLINES),
        special_tokens=[*text.SPECIAL_TOKENS, *IMAGE_TOKENS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(text.CORPUS * 4, trainer=trainer)
    for i, name in enumerate([*text.SPECIAL_TOKENS, *IMAGE_TOKENS]):
        assert tok.token_to_id(name) == i, (name, tok.token_to_id(name))
    tok.add_tokens([AddedToken(n, normalized=False, special=False) for n in NEWLINES])
    tok.post_processor = processors.TemplateProcessing(
        single="<bos> $A", pair="<bos> $A $B", special_tokens=[("<bos>", text.BOS)]
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<bos>",
        eos_token="<eos>",
        unk_token="<unk>",
        pad_token="<pad>",
        additional_special_tokens=["<start_of_turn>", "<end_of_turn>"],
        extra_special_tokens={"boi_token": IMAGE_TOKENS[0], "eoi_token": IMAGE_TOKENS[1], "image_token": IMAGE_TOKENS[2]},
        padding_side="left",
        model_max_length=131072,
    )
    fast.chat_template = text.CHAT_TEMPLATE
    assert len(fast) == VOCAB_SIZE, len(fast)
    vocab = fast.get_vocab()
    assert all(n in vocab for n in NEWLINES)
    return fast


def make_processor(out: Path) -> None:
    from transformers import Gemma3Processor
    from transformers.models.gemma3.image_processing_pil_gemma3 import (
        Gemma3ImageProcessorPil,
    )

    image_processor = Gemma3ImageProcessorPil(
        size={"height": IMAGE_SIZE, "width": IMAGE_SIZE},
        image_mean=[0.5, 0.5, 0.5],
        image_std=[0.5, 0.5, 0.5],
        do_pan_and_scan=False,
    )
    tokenizer = make_tokenizer()
    processor = Gemma3Processor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        chat_template=text.CHAT_TEMPLATE,
        image_seq_length=MM_TOKENS_PER_IMAGE,
    )
    processor.save_pretrained(out)
    # Also the file of its own, as the published gemma-3-4b-it has it (transformers 5 keeps the image
    # processor inside processor_config.json; older readers, and vLLM's get_hf_image_processor_config, look here).
    image_processor.save_pretrained(out)


def make_model(out: Path) -> None:
    import torch
    from transformers import (
        Gemma3Config,
        Gemma3ForConditionalGeneration,
        Gemma3TextConfig,
        GenerationConfig,
        SiglipVisionConfig,
    )

    torch.manual_seed(0)
    text_config = Gemma3TextConfig(
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
        pad_token_id=text.PAD,
        eos_token_id=[text.EOS, text.END_OF_TURN],
        bos_token_id=text.BOS,
        tie_word_embeddings=True,
    )
    vision_config = SiglipVisionConfig(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_channels=3,
        image_size=IMAGE_SIZE,
        patch_size=PATCH_SIZE,
        layer_norm_eps=1e-6,
        vision_use_head=False,
    )
    config = Gemma3Config(
        text_config=text_config,
        vision_config=vision_config,
        mm_tokens_per_image=MM_TOKENS_PER_IMAGE,
        boi_token_index=BOI,
        eoi_token_index=EOI,
        image_token_index=IMAGE_SOFT,
        pad_token_id=text.PAD,
        eos_token_id=[text.EOS, text.END_OF_TURN],
        bos_token_id=text.BOS,
        tie_word_embeddings=True,
        torch_dtype="bfloat16",
    )
    model = Gemma3ForConditionalGeneration(config).to(torch.bfloat16).eval()
    model.save_pretrained(out, safe_serialization=True)
    published_layout(out / "model.safetensors")
    GenerationConfig(
        bos_token_id=text.BOS, eos_token_id=[text.EOS, text.END_OF_TURN], pad_token_id=text.PAD
    ).save_pretrained(out)


def published_layout(path: Path) -> None:
    """The checkpoint keys of the published gemma-3-4b-it: transformers 5 writes the vision tower's weights
    as vision_tower.embeddings.*, the published checkpoint (and vLLM's loader) has vision_tower.vision_model.*."""
    from safetensors.torch import load_file, save_file

    tensors = load_file(path)
    renamed = {}
    for key, value in tensors.items():
        if key.startswith("vision_tower.") and not key.startswith("vision_tower.vision_model."):
            key = "vision_tower.vision_model." + key[len("vision_tower."):]
        renamed[key] = value
    assert any(k.startswith("language_model.model.") for k in renamed), sorted(renamed)[:5]
    assert any(k.startswith("multi_modal_projector.") for k in renamed), sorted(renamed)[:5]
    save_file(renamed, path, metadata={"format": "pt"})


def main() -> int:
    if len(sys.argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    out = Path(sys.argv[1])
    out.mkdir(parents=True, exist_ok=True)
    make_processor(out)
    make_model(out)
    print(json.dumps({
        "model_dir": str(out), "vocab_size": VOCAB_SIZE, "image_size": IMAGE_SIZE, "patch_size": PATCH_SIZE,
        "mm_tokens_per_image": MM_TOKENS_PER_IMAGE,
    }))
    return 0


if __name__ == "__main__":
    sys.exit(main())
