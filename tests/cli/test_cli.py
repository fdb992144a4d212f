"""The CLI: fast help, Hydra config printing, clear one-line errors with exit code 2."""

import subprocess
import sys

from conftest import run_cli
from omegaconf import OmegaConf


def test_help_is_fast_and_imports_no_torch():
    code = "import sys, ldmkit.cli; print('torch' in sys.modules, 'hydra' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]
    proc = run_cli("--help")
    for command in ("train-ae", "encode-dataset", "train-ldm", "sample", "eval-fid"):
        assert command in proc.stdout


def test_cfg_job_prints_composed_config():
    cfg = OmegaConf.create(run_cli("train-ae", "f=8", "trainer.max_steps=7", "--cfg", "job").stdout)
    assert list(cfg.first_stage.ch_mult) == [1, 2, 4, 4] and cfg.first_stage.embed_dim == 4
    assert cfg.trainer.max_steps == 7
    cfg = OmegaConf.create(run_cli("train-ldm", "cond=class", "--cfg", "job", "--resolve").stdout)
    assert cfg.cond._target_.endswith("ClassConditioner") and cfg.unet.context_dim == cfg.cond.embed_dim == 64
    assert cfg.trainer.gradient_clip_val == 1.0  # train-ldm clips by default (train-ae cannot: two optimisers)


def test_bad_group_option_lists_choices_exit_2():
    proc = run_cli("train-ae", "first_stage=kl_f99", check=False)
    assert proc.returncode == 2
    assert "Available options in 'first_stage'" in proc.stderr and "kl_f4" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_hydra_usage_error_is_one_line():
    proc = run_cli("train-ae", "-m", "f=2,4", "--cfg", "job", check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().startswith("error:") and len(proc.stderr.strip().splitlines()) == 1


def test_missing_model_dir_is_one_line(tmp_path):
    proc = run_cli("sample", f"ckpt={tmp_path}/nope", f"out={tmp_path}/s", check=False)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].startswith("error: ckpt=")
    assert "Traceback" not in proc.stderr
    proc = run_cli("train-ldm", "dataset=latents", f"ae={tmp_path}", f"out={tmp_path}/l", check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr


def test_missing_inception_weights_names_the_file(tmp_path):
    proc = run_cli("eval-fid", f"images={tmp_path}", f"inception_weights={tmp_path}/none.pth",
                   f"out={tmp_path}/e", check=False)
    assert proc.returncode == 2
    assert "none.pth does not exist" in proc.stderr and "Traceback" not in proc.stderr
    assert "on_missing_weights=skip" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


def test_console_messages_stay_one_line_off_a_terminal(capsys):
    from ldmkit.console import console

    text = "first stage kl f=4 -> " + "/very/long" * 12 + "  (scale 0.5256, val PSNR 29.74 dB)"
    console.print(text)
    assert capsys.readouterr().err == text + "\n"  # rich would wrap at 80 columns in a log file or a pipe
