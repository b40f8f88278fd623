"""The optional `litellm` row: LiteLLM's proxy in front of the fake provider (`run.py --with litellm`).

It is what a user would deploy instead of sidechat, so it gets its own virtualenv (bench/.venv-litellm,
made once: LiteLLM's dependency tree is large and must not leak into sidechat's) and is configured
as light as LiteLLM allows, still as a deployment:
- one uvicorn worker (`--num_workers 1`), like sidechat on its one pinned core; uvicorn on uvloop
  with h11, what `litellm[proxy]` installs and starts by default;
- no `database_url` and no `master_key`: no Postgres, no virtual keys, so any bearer token passes
  (the load generator's `--auth` tokens, one per stream) and no key is looked up per request.
  LiteLLM refuses to boot so unless told `dangerously_permit_weak_or_unset_master_key`. A real
  deployment sets a master key, but then every client must send that one key (not measured);
- `disable_spend_logs` / `disable_error_logs`: nothing is queued for a database that is not there;
- `num_retries: 0` (LiteLLM's and the router's) and `disable_cooldowns`: a failed call fails once,
  as sidechat's does, and the one deployment is never benched;
- `turn_off_message_logging` and no callbacks: no success handler copies the messages;
- `LITELLM_TELEMETRY_DISABLED=true`: the telemetry veto;
- `LITELLM_LOCAL_MODEL_COST_MAP=True`: the cost map ships in the package; without it each start
  tries to fetch it from GitHub and waits through retries when offline;
- `LITELLM_LOG=WARNING`: no per-request log line.
What stays on is what LiteLLM does per chunk in any deployment: parse the provider's chunk into its
own model, re-serialise it, count usage.

The config is written as JSON, which is YAML, so the bench side needs no YAML library.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

VERSION = "1.108.7"  # the newest whose `[proxy]` extra resolves on the index here (1.108.8+ need
# litellm-enterprise / litellm-proxy-extras / litellm-proxy releases it does not have yet)
REQUIREMENT = f"litellm[proxy]=={VERSION}"
HEALTH_PATH = "/health/liveliness"  # answers 200 once the app is up; never calls the provider


def prepare(cache: Path) -> Path:
    """The python of a virtualenv at `cache` with LiteLLM's proxy installed, made on first use."""
    python = cache / "bin" / "python"
    marker = cache / f"installed-{VERSION}"  # written last: a half-finished install is redone
    if marker.exists():
        return python
    print(f"installing {REQUIREMENT} into {cache} (once; a few minutes)", flush=True)
    try:
        if not python.exists():
            subprocess.run(
                [sys.executable, "-m", "venv", str(cache)], check=True, capture_output=True, text=True
            )
        subprocess.run(
            [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", REQUIREMENT],
            check=True,
            capture_output=True,
            text=True,
        )
    except subprocess.CalledProcessError as exc:
        lines = (exc.stderr or exc.stdout or "").strip().splitlines()
        errors = [line for line in lines if line.startswith("ERROR")]  # pip warns a lot, then says why
        why = (errors or lines or [f"exit status {exc.returncode}"])[-1]
        raise SystemExit(f"could not install {REQUIREMENT} into {cache}: {why}") from exc
    marker.write_text(REQUIREMENT + "\n")
    return python


def config(fake_port: int) -> dict[str, object]:
    return {
        "model_list": [
            {
                "model_name": "bench",
                "litellm_params": {
                    "model": "openai/bench",
                    "api_base": f"http://127.0.0.1:{fake_port}/v1",
                    "api_key": "x",
                },
            }
        ],
        "litellm_settings": {
            "num_retries": 0,
            "request_timeout": 600,  # as sidechat's upstream timeouts in the idle scenario: never fires
            "turn_off_message_logging": True,
            "callbacks": [],
        },
        "router_settings": {"num_retries": 0, "disable_cooldowns": True},
        "general_settings": {
            "disable_spend_logs": True,
            "disable_error_logs": True,
            "dangerously_permit_weak_or_unset_master_key": True,
        },
    }


def command(python: Path, port: int, fake_port: int, workdir: Path) -> tuple[list[str], dict[str, str]]:
    """Start the proxy on 127.0.0.1:`port`, serving model `bench` from the fake provider."""
    path = workdir / "litellm-config.yaml"
    path.write_text(json.dumps(config(fake_port), indent=1))
    script = python.parent / "litellm"  # the console script pip installed: what a user runs
    argv = [str(python), str(script), "--config", str(path), "--host", "127.0.0.1", "--port", str(port)]
    argv += ["--num_workers", "1"]
    env = {
        "LITELLM_LOG": "WARNING",
        "LITELLM_LOCAL_MODEL_COST_MAP": "True",
        "LITELLM_TELEMETRY_DISABLED": "true",
    }
    return argv, env
