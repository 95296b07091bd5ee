"""gs:// workdirs against a real GCS server on loopback (gcp-storage-emulator), and start-or-resume for preemptible
jobs: the SLURM example's command run twice, killed in between, ends where an uninterrupted local run ends."""

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TIMING = ("sample_s", "reward_s", "update_s", "step_s", "tokens_per_s")
TINY = f"{ROOT}/configs/tiny.py"


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


@pytest.fixture(scope="module")
def emulator(tmp_path_factory):
  """A GCS server on 127.0.0.1 with one bucket, `bucket`; yields its URL."""
  port = _free_port()
  data = tmp_path_factory.mktemp("gcs-data")
  exe = os.path.join(os.path.dirname(sys.executable), "gcp-storage-emulator")
  proc = subprocess.Popen([exe, "-d", str(data), "start", "--host", "127.0.0.1", "--port", str(port),
                           "--default-bucket", "bucket", "-q"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  url = f"http://127.0.0.1:{port}"
  deadline = time.time() + 60
  while True:
    try:
      urllib.request.urlopen(f"{url}/storage/v1/b/bucket", timeout=2)
      break
    except OSError:
      if time.time() > deadline or proc.poll() is not None:
        proc.kill()
        raise RuntimeError("the GCS emulator did not start")
      time.sleep(0.3)
  yield url
  proc.kill()
  proc.wait()


def _env(url, **extra):
  env = dict(os.environ, STORAGE_EMULATOR_HOST=url, **extra)
  for k in ("TENSORSTORE_GCS_HTTP_URL", "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "GOOGLE_AUTH_TOKEN_FOR_TESTING"):
    env.pop(k, None)  # dashjax derives these from STORAGE_EMULATOR_HOST itself
  return env


@contextlib.contextmanager
def _emulator_here(url):
  """This process's storage clients pointed at the emulator, the environment restored afterwards."""
  saved = dict(os.environ)
  os.environ["STORAGE_EMULATOR_HOST"] = url
  from dashjax import platform

  platform.configure(os.environ)
  try:
    yield
  finally:
    os.environ.clear()
    os.environ.update(saved)


def _objects(url, prefix):
  """{name: (generation, size)} of every object under prefix, read from the server's JSON API."""
  out, token = {}, ""
  while True:
    q = f"{url}/storage/v1/b/bucket/o?prefix={prefix}" + (f"&pageToken={token}" if token else "")
    page = json.load(urllib.request.urlopen(q, timeout=10))
    out |= {o["name"]: (o["generation"], int(o["size"])) for o in page.get("items", [])}
    token = page.get("nextPageToken")
    if not token:
      return out


def _read(url, name) -> bytes:
  return urllib.request.urlopen(f"{url}/download/storage/v1/b/bucket/o/{urllib.request.quote(name, safe='')}"
                                f"?alt=media", timeout=10).read()


def _metrics(url, prefix):
  """metrics.jsonl of a bucket run: the joined object plus any parts still open (a killed run)."""
  objs = _objects(url, prefix)
  names = [f"{prefix}metrics.jsonl"] if f"{prefix}metrics.jsonl" in objs else []
  names += sorted(n for n in objs if n.startswith(f"{prefix}metrics.jsonl.parts/"))
  return [json.loads(line) for n in names for line in _read(url, n).decode().splitlines() if line.strip()]


def _strip(rows):
  return [{k: v for k, v in r.items() if k not in TIMING} for r in rows]


def _no_gs_folder(*roots):
  for root in roots:
    for dirpath, dirnames, _ in os.walk(root):
      dirnames[:] = [d for d in dirnames if d != ".git"]
      assert "gs:" not in dirnames, f"a local folder {dirpath}/gs: was created"


STEPS = ["--config.train.num_steps=4", "--config.train.checkpoint_every=1", "--progress=false",
         "--config.eval.every=2"]


def _sbatch(url, cwd, workdir):
  """launch/slurm_example.sbatch as SLURM would run it on one node (its own variables set by hand; `srun` and
  `scontrol` are the only stand-ins, since there is no SLURM here)."""
  bin_dir = cwd / "slurm-bin"
  bin_dir.mkdir(exist_ok=True)
  (bin_dir / "srun").write_text("#!/bin/sh\nwhile [ \"${1#-}\" != \"$1\" ]; do shift; done\nexec \"$@\"\n")
  (bin_dir / "scontrol").write_text("#!/bin/sh\necho 127.0.0.1\n")
  for f in ("srun", "scontrol"):
    os.chmod(bin_dir / f, 0o755)
  env = _env(url, SLURM_SUBMIT_DIR=ROOT, SLURM_JOB_ID="4242", SLURM_PROCID="0", SLURM_NTASKS="1",
             SLURM_JOB_NODELIST="node-0", DASHJAX_VENV=sys.prefix, DASHJAX_CONFIG=TINY, WORKDIR=workdir,
             DASHJAX_PORT=str(_free_port()), PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
  return subprocess.Popen(["bash", f"{ROOT}/launch/slurm_example.sbatch", *STEPS], cwd=cwd, env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)


def test_bucket_run_killed_and_auto_resumed_matches_a_local_run(emulator, tmp_path):
  local = subprocess.run([sys.executable, "-m", "dashjax.cli.train", f"--config={TINY}",
                          f"--workdir={tmp_path / 'local'}", *STEPS], cwd=tmp_path, env=_env(emulator),
                         capture_output=True, text=True, timeout=300)
  assert local.returncode == 0, local.stderr[-3000:]

  prefix = "run/"
  first = _sbatch(emulator, tmp_path, "gs://bucket/run")  # fresh: --auto_resume starts the run
  deadline = time.time() + 240
  while time.time() < deadline and first.poll() is None:
    objs = _objects(emulator, prefix)
    if f"{prefix}checkpoints/2/commit_success.txt" in objs:
      break
    time.sleep(0.2)
  assert first.poll() is None, first.communicate()[0][-3000:]
  os.killpg(first.pid, signal.SIGKILL)  # preemption: no signal handler runs, nothing is flushed
  out = first.communicate()[0]
  assert "starting a new run" in out, out[-3000:]
  assert len(_metrics(emulator, prefix)) < 4, out[-3000:]  # killed mid-run; the resumed run must fill the rest

  second = _sbatch(emulator, tmp_path, "gs://bucket/run")  # the same command continues it
  out = second.communicate(timeout=300)[0]
  assert second.returncode == 0, out[-3000:]
  assert "continuing the run" in out and "Traceback" not in out, out[-3000:]

  with open(tmp_path / "local" / "metrics.jsonl") as f:
    want = _strip(json.loads(line) for line in f)
  got = _metrics(emulator, prefix)
  assert [r["step"] for r in got] == [1, 2, 3, 4]
  assert _strip(got) == want  # rewards, kept rows, losses, grad norms: identical to the uninterrupted local run
  objs = _objects(emulator, prefix)
  for name in ("config.json", "summary.json", "curve.png", "eval.jsonl", "metrics.jsonl"):
    assert f"{prefix}{name}" in objs, sorted(objs)
  assert not any(n.startswith(f"{prefix}metrics.jsonl.parts/") for n in objs)  # joined at the end
  assert any(n.startswith(f"{prefix}tb/events.out.tfevents") for n in objs)
  assert _read(emulator, f"{prefix}curve.png")[:8] == b"\x89PNG\r\n\x1a\n"
  assert {json.loads(line)["step"] for line in _read(emulator, f"{prefix}eval.jsonl").decode().splitlines()} == {2}

  # dashjax-eval reads the bucket run and adds its own file; no object of the run changes.
  before = _objects(emulator, prefix)
  ev = subprocess.run([sys.executable, "-m", "dashjax.cli.eval", f"--config={TINY}", "--workdir=gs://bucket/run"],
                      cwd=tmp_path, env=_env(emulator), capture_output=True, text=True, timeout=300)
  assert ev.returncode == 0, ev.stderr[-3000:]
  after = _objects(emulator, prefix)
  assert set(after) - set(before) == {f"{prefix}eval-step4.json"}
  assert {k: after[k] for k in before} == before
  assert json.loads(_read(emulator, f"{prefix}eval-step4.json"))["step"] == 4

  # A used bucket workdir is refused; --overwrite's move takes every object of the old run aside.
  refused = subprocess.run([sys.executable, "-m", "dashjax.cli.train", f"--config={TINY}",
                            "--workdir=gs://bucket/run"], cwd=tmp_path, env=_env(emulator), capture_output=True,
                           text=True, timeout=300)
  assert refused.returncode == 2 and "already holds a run" in refused.stderr, refused.stderr[-3000:]
  assert _objects(emulator, prefix) == after
  with _emulator_here(emulator):
    from dashjax.store import workdir as run_folder

    target = run_folder.move_aside("gs://bucket/run")
  assert target.startswith("gs://bucket/run.replaced-")
  moved = {n.split("/", 1)[1]: size for n, (_, size) in _objects(emulator, "run.replaced-").items()}
  assert moved == {n[len(prefix):]: size for n, (_, size) in after.items()}
  assert _objects(emulator, prefix) == {}
  _no_gs_folder(tmp_path, ROOT)


def test_missing_bucket_is_one_line_before_the_model_loads(emulator, tmp_path):
  proc = subprocess.run([sys.executable, "-m", "dashjax.cli.train", f"--config={TINY}",
                         "--workdir=gs://no-such-bucket/run"], cwd=tmp_path, env=_env(emulator),
                        capture_output=True, text=True, timeout=120)
  lines = [l for l in proc.stderr.splitlines() if l.startswith("dashjax-train: error:")]
  assert proc.returncode == 2 and len(lines) == 1, proc.stderr[-3000:]
  assert "gs://no-such-bucket/run" in lines[0] and "does not exist" in lines[0]
  assert "Traceback" not in proc.stderr
  _no_gs_folder(tmp_path)


def test_bucket_log_rewrites_only_its_open_part(emulator):
  with _emulator_here(emulator):
    _check_log_parts(emulator)


def _check_log_parts(emulator):
  from dashjax.store.logs import PART_LINES, JsonlLog, read_jsonl

  path, prefix = "gs://bucket/logtest/metrics.jsonl", "logtest/"
  log = JsonlLog(path, fresh=True)
  for step in range(1, PART_LINES + 21):
    log.append({"step": step})
  first_part = f"{prefix}metrics.jsonl.parts/000001.jsonl"
  full = _objects(emulator, prefix)[first_part]
  for step in range(PART_LINES + 21, 2 * PART_LINES + 51):
    log.append({"step": step})
  objs = _objects(emulator, prefix)
  assert objs[first_part] == full  # a full part is never written again: per-step cost does not grow with the run
  assert f"{prefix}metrics.jsonl" not in objs and len(objs) == 3
  assert [r["step"] for r in read_jsonl(path)] == list(range(1, 2 * PART_LINES + 51))
  # A resumed run keeps the lines up to its checkpoint, joined, and goes on from there.
  log = JsonlLog(path, keep=lambda r: r["step"] <= 150)
  log.append({"step": 151})
  log.close()
  assert list(_objects(emulator, prefix)) == [f"{prefix}metrics.jsonl"]
  assert [r["step"] for r in read_jsonl(path)] == list(range(1, 152))
