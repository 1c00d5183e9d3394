"""Runs llama.cpp's converter (`convert_hf_to_gguf.py`'s model classes) with hcp's additions on top.

Started by reference.py as a script in a child process, never imported by hcp: it puts the cached converter and
*its* gguf-py first on the path, so the converter runs against the gguf-py it was written for. It takes one
argument, a JSON request:

    converter   the cached converter folder (convert_hf_to_gguf.py, conversion/, gguf-py/)
    model_dir   the HF folder to convert;  out: the GGUF to write;  outtype: f32 | f16 | bf16;  name: general.name
    bpe_pre     llama.cpp's pre-tokenizer that splits text as the HF tokenizer does (hcp reads it from the
                tokenizer's structure); it wins over the converter's guess from hashing a sample's tokens. None:
                the converter's guess, which must then exist.
    kv          [[key, value type, value, array item type or null], ...] set after the converter's own
                metadata, replacing a key it wrote (chat template, add-BOS/EOS, hcp.* provenance)
    kv_for_tokenizer  {tokenizer.ggml.model: [kv items]}: applied only when the converter wrote that tokenizer
                model ("llama" = SentencePiece: the space prefix)
    byte_level_bpe  the tokenizer is a byte-level BPE (tokenizer.json): where the converter's class insists on a
                tokenizer.model, it reads the vocabulary as GPT-2's instead
    report      a JSON file to write: ok, error, the architectures, the pre-tokenizer guessed and used

The exit status is 0 only with a complete GGUF; the reason of a failure is in the report.
"""

from __future__ import annotations

import json
import logging
import sys
import traceback
from pathlib import Path
from typing import Any


class UnknownArchitecture(Exception):
    """An architecture the converter has no model class for."""


def main(request_path: str) -> int:
    request = json.loads(Path(request_path).read_text())
    report: dict[str, Any] = {"ok": False}
    try:
        report.update(convert(request))
        report["ok"] = True
    except UnknownArchitecture as exc:
        report["unknown_architecture"] = str(exc)
    except Exception as exc:  # noqa: BLE001 - every failure is reported to the parent, which raises ExportError
        report["error"] = f"{exc.__class__.__name__}: {exc}"
        report["traceback"] = traceback.format_exc()
    Path(request["report"]).write_text(json.dumps(report))
    return 0 if report["ok"] else 1


def convert(request: dict[str, Any]) -> dict[str, Any]:
    converter = Path(request["converter"])
    # This script's own folder (hcp/export) must not shadow anything the converter imports.
    sys.path[:] = [str(converter / "gguf-py"), str(converter)] + sys.path[1:]
    logging.basicConfig(level=logging.WARNING)

    import gguf
    import torch
    from conversion import ModelBase, ModelType, get_model_architecture, get_model_class
    from conversion.base import TextModel

    if not str(Path(gguf.__file__).resolve()).startswith(str(converter.resolve())):
        raise RuntimeError(f"gguf-py was imported from {gguf.__file__}, not from the converter's folder")
    model_dir = Path(request["model_dir"])
    hparams = ModelBase.load_hparams(model_dir, False)
    architecture = get_model_architecture(hparams, ModelType.TEXT)
    try:
        model_class = get_model_class(architecture)
    except NotImplementedError:
        raise UnknownArchitecture(architecture) from None
    pre: dict[str, str | None] = {"reference": None, "used": None}
    written: dict[str, Any] = {}

    def vocab_base_pre(self: Any, tokenizer: Any) -> str:
        try:
            pre["reference"] = original_pre(self, tokenizer)
        except NotImplementedError:
            pre["reference"] = None  # the converter does not know the hash of this tokenizer's sample tokens
        pre["used"] = request.get("bpe_pre") or pre["reference"]
        if pre["used"] is None:
            raise NotImplementedError("the tokenizer's BPE pre-tokenizer is known neither to hcp nor to llama.cpp's "
                                      "converter")
        return pre["used"]

    original_pre = TextModel.get_vocab_base_pre
    TextModel.get_vocab_base_pre = vocab_base_pre  # type: ignore[method-assign]
    original_set_vocab = model_class.set_vocab

    def set_vocab(self: Any) -> None:
        try:
            original_set_vocab(self)
        except (FileNotFoundError, ValueError):
            # Phi-3's class takes a vocabulary without tokenizer.model for byte-level BPE only when
            # tokenizer_config.json names GPT2Tokenizer, which transformers v5 no longer writes when it saves one.
            if not request.get("byte_level_bpe") or (model_dir / "tokenizer.model").is_file():
                raise
            self._set_vocab_gpt2()
        writer = self.gguf_writer
        tokenizer_model = writer.kv_data[0].get("tokenizer.ggml.model")
        written["tokenizer_model"] = tokenizer_model.value if tokenizer_model is not None else None
        items = list(request.get("kv", []))
        items += request.get("kv_for_tokenizer", {}).get(written["tokenizer_model"], [])
        for key, vtype, value, sub_type in items:
            writer.remove_key(key)
            writer.add_key_value(key, value, gguf.GGUFValueType[vtype],
                                 gguf.GGUFValueType[sub_type] if sub_type else None)

    model_class.set_vocab = set_vocab  # type: ignore[method-assign]
    ftype = {"f32": gguf.LlamaFileType.ALL_F32, "f16": gguf.LlamaFileType.MOSTLY_F16,
             "bf16": gguf.LlamaFileType.MOSTLY_BF16}[request["outtype"]]
    with torch.inference_mode():
        model = model_class(model_dir, ftype, Path(request["out"]), model_name=request["name"])
        model.write()
    return {"architecture": architecture, "gguf_architecture": model.gguf_writer.arch, "pre": pre, **written}


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
