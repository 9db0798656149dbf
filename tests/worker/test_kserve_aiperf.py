"""A short aiperf profile against the KServe REST generate_stream endpoint (aiperf's template
endpoint, which is how it reaches a Triton-style server): every request succeeds and aiperf
measures time to first token and inter-token latency from the streamed events.

aiperf lives in its own venv (bench/engine.py sets it up); where it is absent, as on CI, this
test is skipped and test_kserve_rest.py covers the endpoint with tritonclient."""

import json
import subprocess
from pathlib import Path

import pytest
from dataplane_helpers import MODEL

AIPERF = Path.home() / ".cache" / "helix-bench" / "aiperf" / "bin" / "aiperf"
TEMPLATE = '{"text_input": {{ text|tojson }}, "max_tokens": {{ max_tokens or 8 }}, "ignore_eos": true}'


@pytest.mark.skipif(not AIPERF.exists(), reason=f"no aiperf venv at {AIPERF} (bench/engine.py sets it up)")
def test_aiperf_profiles_the_kserve_generate_stream_endpoint(served, checkpoint, tmp_path) -> None:
    extra = json.dumps({"payload_template": TEMPLATE, "response_field": "text_output"})
    argv = [str(AIPERF), "profile", "--model", MODEL, "--url", served.http_url, "--endpoint-type", "template",
            "--custom-endpoint", f"/v2/models/{MODEL}/generate_stream", "--streaming", "--extra-inputs", extra,
            "--tokenizer", str(checkpoint), "--synthetic-input-tokens-mean", "16", "--synthetic-input-tokens-stddev",
            "0", "--output-tokens-mean", "8", "--output-tokens-stddev", "0", "--request-count", "8",
            "--concurrency", "2", "--artifact-dir", str(tmp_path), "--ui-type", "none", "--no-server-metrics",
            "--no-gpu-telemetry", "--workers-max", "1", "--record-processors", "1"]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    figures = json.loads((tmp_path / "profile_export_aiperf.json").read_text())
    assert figures["request_count"]["avg"] == 8
    assert not (figures.get("error_request_count") or {}).get("avg")
    assert figures["time_to_first_token"]["avg"] > 0 and figures["inter_token_latency"]["avg"] > 0
