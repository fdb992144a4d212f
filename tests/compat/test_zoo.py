"""Every released CompVis config (the shrunk zoo): import strict, then equal CompVis' own outputs (ref.pt).

For each fixture the checkpoint is rebuilt from keys.tsv (``zoo.py``); first stages must reproduce ``z``, ``recon``
(and VQ's ``recon_nq``); LDMs ``recon``, ``z_first_stage``, the conditioning ``c`` from ``cond_input``, the UNet's
``eps`` with the raw weights (``use_ema=false``) and ``eps_ema`` with the default load (the EMA weights).
"""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import pytest
import torch
import zoo

import ldmkit
from ldmkit.tasks.import_compvis import import_first_stage, import_ldm

GUIDE = Path(__file__).parents[2] / "docs" / "import-compvis.md"
OPTION_INPUT = {"prompt": "prompt", "prompts_file": "prompt", "label": "label", "layout": "layout",
                "semantic": "semantic", "image": "image", "mask": "mask"}


def guide_rows() -> dict[str, tuple[str, str]]:
    """The guide's table of released configs: CompVis config path -> (import line, sample line)."""
    rows = {}
    for line in GUIDE.read_text().splitlines():
        cells = [c.strip().strip("`") for c in line.strip().strip("|").split("|")]
        if len(cells) == 4 and cells[2].startswith("ldmkit import-compvis"):
            rows[cells[0]] = (cells[2], cells[3])
    return rows


def documented_inputs(sample_line: str) -> list[str]:
    """The inputs a documented sample line gives (in the order a conditioner declares them: see the model)."""
    keys = [re.split(r"[=.]", w, maxsplit=1)[0] for w in shlex.split(sample_line)[2:]]
    return list(dict.fromkeys(OPTION_INPUT[k] for k in keys if k in OPTION_INPUT))


def test_guide_lists_every_released_config():
    rows = guide_rows()
    sources = {(zoo.ZOO / n / "SOURCE").read_text().strip(): n for n in zoo.NAMES}
    assert set(rows) == set(sources) and len(rows) == 27
    for source, (imp, _) in rows.items():
        assert shlex.split(imp)[2] == source or "configs/" in source, source  # the import reads that YAML


def assert_equal(actual: torch.Tensor, reference: torch.Tensor, what: str) -> None:
    """Within 1e-4 x max(1, max |reference|) (the zoo's tolerance)."""
    assert actual.shape == reference.shape, what
    tol = 1e-4 * max(1.0, reference.abs().max().item())
    err = (actual - reference).abs().max().item()
    assert err <= tol, f"{what}: max |diff| {err:.3g} > {tol:.3g}"


def concat_or_context(cond) -> torch.Tensor:
    """What reaches the UNet: the cross-attention context or the concatenated channels."""
    return cond.context if cond.context is not None else cond.concat


@pytest.mark.parametrize("name", zoo.NAMES)
def test_zoo_import_equals_compvis(name, tmp_path, one_thread):
    ckpt = zoo.write_checkpoint(name, tmp_path / "model.ckpt")
    config, ref, out = zoo.ZOO / name / "config.yaml", zoo.reference(name), tmp_path / "out"
    if name.startswith("ae_"):
        import_first_stage(config, ckpt, out)
        ae = ldmkit.load(out).ae
        with torch.no_grad():
            z = ae.encode(ref["x"]).mode()
            assert_equal(z, ref["z"], "z")
            assert_equal(ae.decode(z), ref["recon"], "recon")
            if "recon_nq" in ref:
                assert_equal(ae.decode_quantized(z), ref["recon_nq"], "recon_nq")
        return
    meta = import_ldm(config, ckpt, out)
    assert meta["steps"] == 1234 and meta["ema"] == ("eps_ema" in ref)
    assert json.loads((out / "meta.json").read_text())["source"]["config"] == str(config.resolve())
    raw, default = ldmkit.load(out, use_ema=False), ldmkit.load(out)
    documented = guide_rows()[(zoo.ZOO / name / "SOURCE").read_text().strip()][1]
    assert meta["task"] == raw.cond.task and meta["inputs"] == list(raw.cond.inputs)
    assert sorted(documented_inputs(documented)) == sorted(meta["inputs"]), f"the guide's sample line for {name}"
    with torch.no_grad():
        fs = raw.first_stage
        assert_equal(fs.decode(fs.encode(ref["image"])), ref["recon"], "recon")
        assert_equal(fs.posterior(ref["image"]).mode(), ref["z_first_stage"], "z_first_stage")
        cond = raw.condition(ref["cond_input"]) if ref["cond_input"] is not None else None
        if cond is not None:
            assert_equal(concat_or_context(cond), ref["c"], "c")
        assert_equal(raw.net(ref["x"], ref["t"], cond), ref["eps"], "eps (use_ema=false)")
        eps = default.net(ref["x"], ref["t"], cond)
        assert_equal(eps, ref["eps_ema"] if "eps_ema" in ref else ref["eps"], "eps (default load)")
