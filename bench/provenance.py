"""What a benchmark line records about its run: code version, machine, libraries."""
import os
import platform
import subprocess


def git_commit() -> str:
  """HEAD, with '-dirty' when tracked files differ from it (what was measured)."""
  def git(*args):
    return subprocess.run(["git", *args], capture_output=True, text=True,
                          check=False).stdout.strip()
  return git("rev-parse", "--short", "HEAD") + ("-dirty" if git(
      "status", "--porcelain", "--untracked-files=no") else "")


def cpu() -> dict:
  """CPU model, core count and the vector extensions that pick GEMM kernels."""
  model, flags = platform.processor(), set()
  try:
    with open("/proc/cpuinfo", encoding="utf-8") as f:
      for line in f:
        if line.startswith("model name"):
          model = line.split(":", 1)[1].strip()
        elif line.startswith("flags"):
          flags = set(line.split(":", 1)[1].split())
          break
  except OSError:
    pass
  wanted = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8")
  return {"cpu": model, "cpu_count": os.cpu_count(),
          "cpu_flags": [f for f in wanted if f in flags]}
