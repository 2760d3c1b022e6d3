"""Child processes of bench/on_device.py, timed and measured from the outside.

`spawn` starts a command in the repository with stdin from a file and reads its
stdout as it comes: the first line's arrival is a cold start, the exit ends a whole
run. Peak memory is the child's ru_maxrss, read by GNU time where it is installed:
read in this process instead (os.wait4), it would count this process's resident set
at the fork, which exec carries over into the child's high-water mark.
"""
import contextlib
import functools
import os
import shlex
import signal
import subprocess
import tempfile
import threading
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class ChildFailed(RuntimeError):
  pass


@functools.cache
def gnu_time() -> str | None:
  """/usr/bin/time if it is GNU time (its -f %M is the child's ru_maxrss, KiB)."""
  try:
    probe = subprocess.run(["/usr/bin/time", "-f", "%M", "true"], capture_output=True,
                           text=True, check=False, timeout=10)
  except (OSError, subprocess.TimeoutExpired):
    return None
  return "/usr/bin/time" if probe.stderr.strip().isdigit() else None


def peak_memory() -> str:
  """How `spawn` reads a child's peak memory."""
  return ("ru_maxrss of the command as /usr/bin/time -f %M reports it (its own fork"
          " counts, about 1 MB)" if gnu_time() else
          "ru_maxrss of the child from os.wait4 (it counts this benchmark's own"
          " resident set at the fork: install GNU time for a clean figure)")


def spawn(argv: list[str], stdin_path: str, env: dict, timeout_s: float) -> dict:
  """Runs argv from the repository, stdin from a file, in its own process group
  (killed whole after `timeout_s`): seconds to its first stdout line and to its
  exit, its stdout, and its peak resident set in bytes (`peak_memory` says how it
  is read)."""
  with (open(stdin_path, "rb") as stdin, tempfile.TemporaryFile() as errors,
        tempfile.NamedTemporaryFile(mode="r") as rss):
    measured = gnu_time()
    full = [measured, "-f", "%M", "-o", rss.name, *argv] if measured else argv
    start = time.perf_counter()
    proc = subprocess.Popen(full, stdin=stdin, stdout=subprocess.PIPE, stderr=errors,
                            cwd=REPO, env=env, start_new_session=True)
    timer = threading.Timer(timeout_s, os.killpg, (proc.pid, signal.SIGKILL))
    timer.start()
    try:
      first = proc.stdout.readline()
      first_s = time.perf_counter() - start
      rest = proc.stdout.read()
      if measured:
        proc.wait()
      else:
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
      total_s = time.perf_counter() - start
    except BaseException:
      with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
      raise
    finally:
      timer.cancel()
      proc.stdout.close()
    if proc.returncode != 0:
      errors.seek(0)
      raise ChildFailed(f"{shlex.join(argv[:6])}{' ...' * (len(argv) > 6)}: "
                        + reason(errors.read().decode("utf-8", errors="replace"),
                                 proc.returncode))
    peak_kib = int(rss.read().split()[-1]) if measured else usage.ru_maxrss
  return {"first_line_s": first_s, "total_s": total_s,
          "stdout": (first + rest).decode("utf-8"), "max_rss_bytes": peak_kib * 1024}


def reason(stderr: str, returncode: int) -> str:
  """The line of a failed command's stderr that says why: the last one naming an
  error (a traceback's exception, absl's FATAL line), else the last line."""
  lines = [l.strip() for l in stderr.splitlines() if l.strip()]
  named = [l for l in lines if "error" in l.lower() or l.startswith("FATAL")]
  return ((named or lines or [f"exit status {returncode}"])[-1])[-400:]


def child_env() -> dict:
  """This environment (CT2_USE_MKL as bench/real_text_engines.py sets it) without
  a JAX compilation cache, each kind naming its own; on CPU."""
  env = {k: v for k, v in os.environ.items() if k != "JAX_COMPILATION_CACHE_DIR"}
  env.setdefault("JAX_PLATFORMS", "cpu")
  return env
