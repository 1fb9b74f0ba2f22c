"""Decision experiment: does fusing the BERT graph make the ONNX MiniLM faster?

Builds, in a temp folder, the export without fusion (torch's default SDPA attention,
what recipe r1 shipped) and the shipped recipe (eager attention + onnxruntime's BERT
optimizer), each fp32 and int8 (per-channel dynamic quantisation), then measures on
real chat prompts: CPU time per single prompt (``time.thread_time`` of the calling
thread, one intra-op thread, so other jobs on a shared machine inflate it far less
than wall time), wall p50, and agreement with torch.

Run (heavy, ~2 minutes)::

    flock /work/coord/heavy.lock .venv/bin/python benchmarks/lab/onnx_fusion.py

Writes ``benchmarks/results/onnx_fusion.txt``.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from embedding_bench import real_prompts  # noqa: E402

from semcache.embedding import SentenceTransformerEmbedder, bundled_model_path  # noqa: E402
from semcache.onnx_embedding import OnnxEmbedder, _export_fp32, _quiet  # noqa: E402
from semcache.report import format_table  # noqa: E402


def unfused_fp32(out: Path) -> None:
    """Recipe r1: torch's default attention, no graph fusion."""
    import torch
    from transformers import AutoModel

    with _quiet():
        hf = AutoModel.from_pretrained(str(bundled_model_path())).eval()

    class Pooled(torch.nn.Module):
        def __init__(self, m: object) -> None:
            super().__init__()
            self.m = m

        def forward(self, input_ids: object, attention_mask: object, token_type_ids: object) -> object:
            h = self.m(input_ids=input_ids, attention_mask=attention_mask,  # type: ignore[operator]
                       token_type_ids=token_type_ids).last_hidden_state
            mask = attention_mask.unsqueeze(-1).to(h.dtype)  # type: ignore[attr-defined]
            return (h * mask).sum(1) / torch.clamp(mask.sum(1), min=1e-9)

    ids = torch.ones((2, 8), dtype=torch.long)
    names = ["input_ids", "attention_mask", "token_type_ids"]
    axes = {n: {0: "batch", 1: "seq"} for n in names} | {"sentence_embedding": {0: "batch"}}
    with _quiet(), torch.no_grad():
        torch.onnx.export(Pooled(hf), (ids, ids, torch.zeros_like(ids)), str(out), dynamo=False,
                          input_names=names, output_names=["sentence_embedding"],
                          dynamic_axes=axes, opset_version=17, do_constant_folding=True)


def quantize(src: Path, dst: Path) -> None:
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with _quiet():
        quantize_dynamic(str(src), str(dst), weight_type=QuantType.QInt8, per_channel=True,
                         extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT})


def main() -> int:
    from tqdm import tqdm

    prompts = real_prompts(600, seed=2)
    ref = SentenceTransformerEmbedder(threads=1).encode(prompts)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        unfused_fp32(d / "unfused_fp32.onnx")
        _export_fp32(bundled_model_path(), d / "fused_fp32.onnx")
        quantize(d / "unfused_fp32.onnx", d / "unfused_int8.onnx")
        quantize(d / "fused_fp32.onnx", d / "fused_int8.onnx")
        for name in tqdm(("unfused_fp32", "fused_fp32", "unfused_int8", "fused_int8"), desc="variants"):
            emb = OnnxEmbedder(quantize=name.endswith("int8"), onnx_file=d / f"{name}.onnx", threads=1)
            cos = np.sum(emb.encode(prompts) * ref, axis=1)
            cpu, wall = [], []
            for _ in range(2):
                for p in prompts[:300]:
                    c0, w0 = time.thread_time(), time.perf_counter()
                    emb.encode([p])
                    cpu.append(time.thread_time() - c0)
                    wall.append(time.perf_counter() - w0)
            fixed = "how do I reset my password on the new account page"  # ~12 tokens
            fx = []
            for _ in range(300):
                c0 = time.thread_time()
                emb.encode([fixed])
                fx.append(time.thread_time() - c0)
            c, w, f = np.array(cpu) * 1e3, np.array(wall) * 1e3, np.array(fx) * 1e3
            rows.append([name, f"{np.percentile(c, 50):.2f}", f"{c.mean():.2f}",
                         f"{np.percentile(w, 50):.2f}", f"{np.percentile(f, 50):.2f}",
                         f"{cos.mean():.5f}", f"{cos.min():.5f}"])
    text = (f"onnx_fusion: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, one intra-op thread, "
            "300 real chat prompts x2 one at a time (CPU ms of the calling thread), a fixed 12-token "
            "question x300, cosine with torch on 600 prompts\n"
            "command: python benchmarks/lab/onnx_fusion.py\n\n"
            + format_table(("graph", "CPU p50", "CPU mean", "wall p50", "fixed CPU p50", "cos mean",
                            "cos min"), rows) + "\n")
    (ROOT / "benchmarks" / "results" / "onnx_fusion.txt").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
