"""Every Python example in README.md and docs/*.md runs as written (small inputs, random weights).

The blocks of one document run in order, in one namespace and one temporary working folder, as a
reader would paste them. A block that needs something the page shows in shell form (an export)
names it in an HTML comment just above it, ``<!-- test-setup: CODE -->``, run first (``sd`` is
``shallowdeep``); rendered pages do not show it.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
BLOCK = re.compile(r"(?:<!-- test-setup:(?P<setup>.*?)-->\s*\n)?```python\n(?P<code>.*?)```", re.S)


def examples(doc: Path) -> list[tuple[str, str, int]]:
    """The document's Python blocks: (setup code, block code, line of the block)."""
    text = doc.read_text()
    return [
        ((m["setup"] or "").strip(), m["code"], text.count("\n", 0, m.start("code")) + 1) for m in BLOCK.finditer(text)
    ]


def test_the_docs_have_python_examples():
    found = {doc.name: len(examples(doc)) for doc in DOCS}
    assert found["README.md"] >= 3 and found["deploy.md"] >= 1, found


@pytest.mark.parametrize("doc", [d for d in DOCS if examples(d)], ids=lambda d: d.name)
def test_every_python_example_runs(doc, tmp_path, monkeypatch):
    import shallowdeep as sd

    monkeypatch.chdir(tmp_path)
    namespace: dict[str, object] = {"__name__": f"example_{doc.stem}"}
    for setup, code, line in examples(doc):
        if setup:
            exec(compile(setup, f"{doc.name}:{line - 1} (test-setup)", "exec"), {"sd": sd, **namespace}, namespace)
        exec(compile(code, f"{doc.name}:{line}", "exec"), namespace)


@pytest.mark.parametrize("zoo, name", [("torchvision", "resnet18"), ("timm", "resnet18")])
def test_the_top_level_to_sdn_is_the_any_model_converter(zoo, name):
    """``shallowdeep.to_sdn(model, image_size=S)``, as the README's first example calls it."""
    import torch

    import shallowdeep as sd

    if zoo == "timm":
        timm = pytest.importorskip("timm")
        model = timm.create_model(name, num_classes=10)
    else:
        import torchvision

        model = getattr(torchvision.models, name)(num_classes=10)
    from shallowdeep.models.convert import to_sdn

    assert sd.to_sdn is to_sdn
    sdn = sd.to_sdn(model.eval(), image_size=64).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        out = sdn(x)
        torch.testing.assert_close(out[-1], model(x))
    assert len(out) == 7  # the paper's six ICs, then the final output
