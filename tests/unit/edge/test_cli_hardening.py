"""The ``edge`` CLI on hostile local input (issue 9): non-regular files, bad arguments, pipes,
terminal escapes in signed strings, core dumps, the default k bound, ``info --memory``.

Most tests call ``edge.cli.main([...])`` in-process; the ones that need a real FIFO, pipe,
signal, bytes argv or resource limit run ``python -m edge`` as a child process, with a timeout
that only guards against the hang the test is about.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys

import pytest

from edge._files import read_regular_file
from edge.cli import main
from edge.errors import TrustError
from edge.keys import KeyFileError

from ...conftest import ROOT, run_cli

#: Seconds a child may take before it counts as hung (the old code never returned).
HANG_TIMEOUT_S = 120


def _keys(built):
    return ["--trust", str(built.publisher_pub_path), "--identity", str(built.device_key_path)]


def _child(argv, *, stdin=None, timeout=HANG_TIMEOUT_S, limit_as_bytes=None, env=None, **kwargs):
    """Run ``python -m edge ARGV`` (argv items may be bytes) and return the CompletedProcess.

    ``stdin`` is bytes or text to feed, or a file object to connect."""
    env = dict(os.environ, **(env or {}), PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    if stdin is not None and not isinstance(stdin, (bytes, str)):
        kwargs["stdin"], stdin = stdin, None

    def limit():
        if limit_as_bytes is not None:
            resource.setrlimit(resource.RLIMIT_AS, (limit_as_bytes, limit_as_bytes))

    if "stdout" not in kwargs:
        kwargs["capture_output"] = True
    return subprocess.run([sys.executable, "-m", "edge", *argv], input=stdin, env=env,
                          cwd=ROOT, timeout=timeout, preexec_fn=limit, **kwargs)


def _in_process(argv, **_ignored):
    """``edge ARGV`` through ``main`` in this process (``conftest.run_cli``): same exit code,
    stdout and stderr as ``_child`` for a test that needs no pipe, signal, limit or bytes argv."""
    return run_cli("edge", *argv)


def _assert_one_error_line(stderr: str | bytes, fragment: str) -> None:
    if isinstance(stderr, bytes):
        stderr = stderr.decode("utf-8", "replace")
    assert "Traceback" not in stderr, stderr
    errors = [line for line in stderr.splitlines() if line.startswith("edge: error: ")]
    assert len(errors) == 1, stderr
    assert all(line.startswith("edge: ") for line in stderr.splitlines() if line.strip()), stderr
    assert fragment in errors[0], stderr


# ---------------------------------------------------------------------------
# 1. Non-regular files


@pytest.mark.parametrize("kind", ["fifo", "device", "directory"])
def test_read_regular_file_refuses_what_is_not_a_regular_file(tmp_path, kind):
    path = {"device": "/dev/zero", "directory": str(tmp_path)}.get(kind, tmp_path / "pipe")
    if kind == "fifo":
        os.mkfifo(path)  # opening it O_RDONLY without O_NONBLOCK would wait for a writer for ever
    with pytest.raises(TrustError, match=f"trust document {path} is not a regular file"):
        read_regular_file(path, max_bytes=1024, what="trust document", error=TrustError)


def test_read_regular_file_checks_the_size_before_reading(tmp_path):
    path = tmp_path / "big"
    path.write_bytes(b"x" * 1025)
    with pytest.raises(KeyFileError, match="is 1025 bytes, limit is 1024"):
        read_regular_file(path, max_bytes=1024, what="key file", error=KeyFileError)
    assert read_regular_file(path, max_bytes=1025, error=KeyFileError) == b"x" * 1025
    missing = tmp_path / "missing"
    with pytest.raises(KeyFileError, match=f"cannot read key file {missing}: No such file"):
        read_regular_file(missing, max_bytes=10, what="key file", error=KeyFileError)


@pytest.mark.parametrize("command", ["search", "verify"])
def test_search_and_verify_refuse_a_fifo_instead_of_hanging(tiny_capsule, tmp_path, command):
    fifo = tmp_path / "pipe.capsule"
    os.mkfifo(fifo)
    extra = ["What is Python?"] if command == "search" else []
    proc = _child([command, str(fifo), *extra, *_keys(tiny_capsule)], text=True)
    assert proc.returncode == 1, proc.stderr
    _assert_one_error_line(proc.stderr, f"capsule {fifo} is not a regular file")


def test_trust_init_refuses_dev_zero_without_reading_it(tiny_capsule, tmp_path):
    # The old code read /dev/zero whole before checking the 1 MiB limit: under this address-space
    # limit it died of MemoryError; without one it grew by gigabytes.
    proc = _child(["trust", "init", "/dev/zero", "--root", str(tiny_capsule.publisher_pub_path),
                   "--store", str(tmp_path / "store")], text=True, limit_as_bytes=4 << 30)
    assert proc.returncode == 1, proc.stderr
    _assert_one_error_line(proc.stderr, "trust document /dev/zero is not a regular file")


@pytest.mark.parametrize("flag", ["--trust", "--identity", "--passphrase-file"])
@pytest.mark.parametrize("kind", ["device", "fifo"])
def test_key_and_passphrase_files_must_be_regular_files(tiny_capsule, tmp_path, capsys, flag, kind):
    path = "/dev/zero"
    if kind == "fifo":
        path = str(tmp_path / "key.pipe")
        os.mkfifo(path)
    keys = {"--trust": ["--trust", path, "--identity", str(tiny_capsule.device_key_path)],
            "--identity": ["--trust", str(tiny_capsule.publisher_pub_path), "--identity", path],
            "--passphrase-file": ["--trust", str(tiny_capsule.publisher_pub_path), "--passphrase-file", path]}[flag]
    assert main(["search", str(tiny_capsule.path), "What is Python?", *keys]) == 1
    _assert_one_error_line(capsys.readouterr().err, f"{path} is not a regular file")


# ---------------------------------------------------------------------------
# 2. Bad arguments: one-line usage errors (exit 2), never a traceback


def _assert_usage_error(proc, fragment: str) -> None:
    """Exit 2, no traceback, nothing on stdout, and ``fragment`` in the stderr error line."""
    stderr = proc.stderr.decode("utf-8", "replace") if isinstance(proc.stderr, bytes) else proc.stderr
    assert proc.returncode == 2, stderr
    assert "Traceback" not in stderr, stderr
    assert not proc.stdout, proc.stdout
    errors = [line for line in stderr.splitlines() if "error: " in line]
    assert len(errors) == 1 and fragment in errors[0], stderr


@pytest.mark.parametrize("json_flag", [[], ["--json"]])
@pytest.mark.parametrize("query", ["", "  \t\n "])
def test_search_refuses_an_empty_or_blank_query(tiny_capsule, query, json_flag):
    proc = _in_process(["search", str(tiny_capsule.path), query, *json_flag, *_keys(tiny_capsule)])
    _assert_usage_error(proc, "edge: error: the query is empty")


@pytest.mark.parametrize("threads", ["0", "-3", "x"])
def test_threads_must_be_a_positive_integer(tiny_capsule, threads):
    proc = _in_process(["search", str(tiny_capsule.path), "What is Python?", f"--threads={threads}",
                   *_keys(tiny_capsule)], text=True)
    _assert_usage_error(proc, "argument --threads")


@pytest.mark.parametrize("k", ["0", "-3"])
def test_k_must_be_a_positive_integer(tiny_capsule, k):
    proc = _in_process(["search", str(tiny_capsule.path), "What is Python?", f"-k={k}", *_keys(tiny_capsule)], text=True)
    _assert_usage_error(proc, "argument -k")


def test_search_refuses_a_query_of_invalid_utf8_bytes(tiny_capsule):
    query = os.fsencode("caf") + b"\xe9 \xff\xfe"  # Latin-1, then bytes no UTF-8 text holds
    proc = _child([b"search", os.fsencode(tiny_capsule.path), query, *map(os.fsencode, _keys(tiny_capsule))])
    _assert_usage_error(proc, "edge: error: the query is not valid UTF-8")


def test_search_reads_one_query_per_line_from_stdin_for_a_dash(tiny_capsule):
    argv = ["search", str(tiny_capsule.path), "-k", "2", "--json", *_keys(tiny_capsule)]
    from_stdin = _child([*argv[:2], "-", *argv[2:]], stdin=b"What is Python?\n\nWhy is Python slow?\n")
    from_argv = _child([*argv[:2], "What is Python?", *argv[2:]])
    assert from_stdin.returncode == 0, from_stdin.stderr
    lines = [json.loads(line) for line in from_stdin.stdout.splitlines()]
    assert [line["line"] for line in lines] == [1, 3]  # blank lines are skipped, numbers kept
    expected = [json.loads(line) for line in from_argv.stdout.splitlines()]
    assert [h["chunk_id"] for h in lines[0]["hits"]] == [h["chunk_id"] for h in expected]
    assert [h["text"] for h in lines[0]["hits"]] == [h["text"] for h in expected]
    with_flag = _child([*argv, "--stdin"], stdin=b"What is Python?\n")
    assert with_flag.returncode == 0 and json.loads(with_flag.stdout)["hits"] == lines[0]["hits"]


@pytest.mark.parametrize("stdin, out", [
    (b"", []),
    (b" \n\t\n", []),
    (b"What is \xff Python?\nWhat is Python?\n", [{"line": 1, "error": "query",
                                                   "message": "line 1 is not valid UTF-8 (byte 8)"}, 2]),
])
def test_search_answers_each_stdin_line_and_reports_a_bad_one_in_place(tiny_capsule, stdin, out):
    proc = _child(["search", str(tiny_capsule.path), "-", *_keys(tiny_capsule)], stdin=stdin)
    assert proc.returncode == 0, proc.stderr
    lines = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [line if isinstance(want, dict) else line["line"] for line, want in zip(lines, out)] == out
    assert len(lines) == len(out)


def test_search_stops_at_a_stdin_line_over_the_limit(tiny_capsule):
    proc = _child(["search", str(tiny_capsule.path), "-", *_keys(tiny_capsule)], stdin=b"a" * (64 * 1024 + 1))
    _assert_usage_error(proc, "edge: error: line 1 on stdin is over 65536 bytes")


def test_search_reads_no_more_than_the_limit_from_an_endless_stdin(tiny_capsule):
    with open("/dev/zero", "rb") as endless:
        proc = _child(["search", str(tiny_capsule.path), "-", *_keys(tiny_capsule)], stdin=endless)
    _assert_usage_error(proc, "edge: error: line 1 on stdin is over 65536 bytes")


def test_the_program_exits_at_once_with_all_its_output_written(tiny_capsule, tmp_path):
    # edge.cli.run ends the process with os._exit after main: what main printed must all be out,
    # through a pipe (more than its 64 KiB buffer) and into a file (block-buffered), and the exit
    # code must be main's.
    queries = b"".join(b"What is Python? %d\n" % i for i in range(25))  # ~9 kB of JSON each
    argv = ["search", str(tiny_capsule.path), "-", "-k", "10", "--json", *_keys(tiny_capsule)]
    buffered = {"PYTHONUNBUFFERED": ""}  # as on a device: stdout block-buffered into a pipe or file
    piped = _child(argv, stdin=queries, env=buffered)
    assert piped.returncode == 0, piped.stderr
    lines = [json.loads(line) for line in piped.stdout.splitlines()]
    assert [line["line"] for line in lines] == list(range(1, 26)) and len(piped.stdout) > 64 * 1024
    with open(tmp_path / "out.jsonl", "wb") as out:
        to_file = _child(argv, stdin=queries, stdout=out, stderr=subprocess.PIPE, env=buffered)
    assert to_file.returncode == 0 and (tmp_path / "out.jsonl").read_bytes() == piped.stdout
    with open(tmp_path / "one.json", "wb") as out:  # one answer, nothing flushed per line
        one = _child([argv[0], argv[1], "What is Python?", *argv[3:]], stdout=out, stderr=subprocess.PIPE,
                     env=buffered)
    one_hits = [json.loads(line) for line in (tmp_path / "one.json").read_bytes().splitlines()]  # a line a hit
    assert one.returncode == 0 and [h["chunk_id"] for h in one_hits] == [h["chunk_id"] for h in lines[0]["hits"]]
    failed = _child(["search", str(tmp_path / "missing.capsule"), "What is Python?", *_keys(tiny_capsule)],
                    env=buffered)
    assert failed.returncode == 1 and "edge: error: cannot open capsule" in failed.stderr.decode()
    assert failed.stderr.decode().endswith("is it complete?\n")  # the hint, the last line, is out too


# ---------------------------------------------------------------------------
# 3. stdout's reader goes away (edge list | head -1): exit quietly, as Unix tools do


def _child_into_closed_pipe(argv):
    """Run ``python -m edge ARGV`` with stdout a pipe whose read end is already closed, so that the
    first write fails with EPIPE whatever the timing (``head -1`` exiting early, made certain)."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        return _child(argv, stdout=write_end, stderr=subprocess.PIPE, text=True)
    finally:
        os.close(write_end)


@pytest.mark.parametrize("argv", [
    ["list"],
    ["search", "{capsule}", "What is Python?", "-k", "3"],
    ["search", "{capsule}", "What is Python?", "-k", "3", "--json"],
])
def test_a_closed_stdout_ends_the_command_quietly(tiny_capsule, tmp_path, argv):
    argv = [a.format(capsule=tiny_capsule.path) for a in argv]
    if argv[0] == "search":
        argv += _keys(tiny_capsule)
    proc = _child_into_closed_pipe([*argv, "--store", str(tmp_path / "store")])
    # was "edge: error: Broken pipe", or a BrokenPipeError report; --trust keys get their note
    assert all(line.startswith("edge: note: ") for line in proc.stderr.splitlines()), proc.stderr
    assert proc.returncode == 141  # 128 + SIGPIPE, what a shell shows for a tool SIGPIPE ended



# ---------------------------------------------------------------------------
# 4. Terminal escapes in publisher-signed strings: escaped in human output, exact in JSON

EVIL_NAME = "reset\x1b[2J\x07\u202e.md"  # clear screen, bell, right-to-left override
EVIL_TEXT = "To reset the unit\x1b]0;owned\x07 hold the button\x1b[31m for ten\tseconds.\x9b1m Then wait."


@pytest.fixture(scope="module")
def escape_capsule(tmp_path_factory):
    from ...conftest import build_test_capsule

    tmp = tmp_path_factory.mktemp("escapes")
    (tmp / "docs").mkdir()
    (tmp / "docs" / EVIL_NAME).write_text(f"# Reset\n\n{EVIL_TEXT}\n", encoding="utf-8")
    return build_test_capsule(tmp / "docs", tmp / "escapes.capsule", keys_dir=tmp / "keys")


def _assert_no_terminal_controls(text: str) -> None:
    unsafe = [c for c in text if (ord(c) < 0x20 and c not in "\n\t") or 0x7f <= ord(c) <= 0x9f or c == "\u202e"]
    assert not unsafe, repr(text)


@pytest.mark.parametrize("command", ["search", "read"])
def test_control_characters_in_signed_strings_are_escaped_in_human_output(escape_capsule, tmp_path, command):
    extra = ["how do I reset the unit?", "-k", "1"] if command == "search" else ["0"]
    argv = [command, str(escape_capsule.path), *extra, *_keys(escape_capsule), "--store", str(tmp_path / "s")]
    human = _in_process(argv, text=True)
    assert human.returncode == 0, human.stderr
    _assert_no_terminal_controls(human.stdout)
    assert "reset\\x1b[2J\\x07\\u202e.md" in human.stdout
    assert "unit\\x1b]0;owned\\x07 hold the button\\x1b[31m for ten\tseconds.\\x9b1m" in human.stdout

    exact = _in_process([*argv, "--json"], text=True)
    assert exact.returncode == 0, exact.stderr
    hit = json.loads(exact.stdout.splitlines()[0])
    assert hit["document"] == EVIL_NAME and EVIL_TEXT in hit["text"]


def test_error_messages_stay_on_one_line_without_terminal_controls(escape_capsule, tmp_path):
    missing = tmp_path / "gone\x1b[2J\nedge: error: forged.capsule"
    proc = _in_process(["verify", str(missing), *_keys(escape_capsule), "--store", str(tmp_path / "s")], text=True)
    assert proc.returncode == 1
    _assert_no_terminal_controls(proc.stderr.replace("\n", ""))
    _assert_one_error_line(proc.stderr, "gone\\x1b[2J\\x0aedge: error: forged.capsule")


# ---------------------------------------------------------------------------
# 5. No core dumps: RLIMIT_CORE 0 and (Linux) not dumpable, from the library call and the CLI

linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="prctl(2) and /proc are Linux")
#: The core limit each child starts with, so that a limit of 0 is the child's own doing.
CHILD_CORE_LIMIT = 1 << 20


def _give_child_a_core_limit() -> None:
    resource.setrlimit(resource.RLIMIT_CORE, (CHILD_CORE_LIMIT, CHILD_CORE_LIMIT))


@pytest.fixture
def core_limit_to_take():
    hard = resource.getrlimit(resource.RLIMIT_CORE)[1]
    if hard != resource.RLIM_INFINITY and hard < CHILD_CORE_LIMIT:
        pytest.skip(f"the hard core limit here is {hard}: a child cannot be given one to take away")


@linux_only
def test_harden_process_turns_core_dumps_off(core_limit_to_take):
    script = ("import resource; from edge._process import harden_process, is_dumpable; "
              "before = (is_dumpable(), resource.getrlimit(resource.RLIMIT_CORE)); done = harden_process(); "
              "print(before, (is_dumpable(), resource.getrlimit(resource.RLIMIT_CORE)), done, harden_process())")
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, cwd=ROOT,
                          preexec_fn=_give_child_a_core_limit,
                          timeout=HANG_TIMEOUT_S)
    assert proc.returncode == 0, proc.stderr
    done = "{'core_limit_zero': True, 'not_dumpable': True}"
    limit = CHILD_CORE_LIMIT
    assert proc.stdout.strip() == f"(True, ({limit}, {limit})) (False, (0, 0)) {done} {done}"


def _core_limit_once_hardened(argv, *, wait=True):
    """Start ``argv`` with RLIMIT_CORE 1 MiB and stdin an open pipe; return its ``/proc/PID/limits``
    core line once that reads 0 (or after ``HANG_TIMEOUT_S``; at once if not ``wait``), then its
    exit status and stderr after stdin is closed."""
    import time

    env = dict(os.environ, PYTHONPATH=str(ROOT))
    child = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=ROOT,
                             env=env, text=True,
                             preexec_fn=_give_child_a_core_limit)
    try:
        deadline = time.monotonic() + HANG_TIMEOUT_S  # guards against a child that never hardens
        core = ""
        while time.monotonic() < deadline and child.poll() is None:
            with open(f"/proc/{child.pid}/limits") as limits:
                core = " ".join(next(line for line in limits if line.startswith("Max core file size")).split())
            if core == "Max core file size 0 0 bytes" or not wait:
                break
            time.sleep(0.05)
        _, stderr = child.communicate(input="", timeout=HANG_TIMEOUT_S)
        return core, child.returncode, stderr
    finally:
        child.kill()
        child.wait()


@linux_only
def test_the_cli_turns_core_dumps_off_before_it_reads_anything(tiny_capsule, core_limit_to_take):
    # edge search CAPSULE - opens the capsule (the device key and decrypted index are in memory)
    # and waits on stdin for queries, one per line: by then its core limit, read from outside, is 0. The wrapper, the same sys.exit(main()) as the
    # edge script, then reports PR_GET_DUMPABLE 0 (from outside that shows only as /proc/PID
    # owned by root, which says nothing when the tests run as root).
    wrapper = ("import sys\nfrom edge.cli import main\nfrom edge._process import is_dumpable\n"
               "try:\n    sys.exit(main())\nfinally:\n    print('dumpable:', is_dumpable(), file=sys.stderr)")
    core, returncode, stderr = _core_limit_once_hardened(
        [sys.executable, "-c", wrapper, "search", str(tiny_capsule.path), "-", *_keys(tiny_capsule)])
    assert core == "Max core file size 0 0 bytes", stderr
    assert returncode == 0 and "error" not in stderr  # stdin closed empty: no queries, nothing to answer
    assert stderr.splitlines()[-1] == "dumpable: False", stderr
    # Control: a child that never calls main() keeps the limit it was given and stays dumpable.
    core, returncode, stderr = _core_limit_once_hardened(
        [sys.executable, "-c", "import sys; sys.stdin.read(); from edge._process import is_dumpable; "
                               "print('dumpable:', is_dumpable(), file=sys.stderr)"], wait=False)
    assert core == f"Max core file size {CHILD_CORE_LIMIT} {CHILD_CORE_LIMIT} bytes", stderr
    assert stderr.strip() == "dumpable: True", stderr


# ---------------------------------------------------------------------------
# 6. Without query_limits.max_k, a capsule that does not allow export bounds k by default


@pytest.fixture(scope="module")
def search_only_capsule(tmp_path_factory):
    from ...conftest import TINY_DOCS, build_test_capsule

    tmp = tmp_path_factory.mktemp("search-only")
    return build_test_capsule(TINY_DOCS / "good", tmp / "search-only.capsule", keys_dir=tmp / "keys",
                              rules={"operations": {"optional": False, "allow": ["search"]}})


def test_k_is_bounded_by_default_when_export_is_not_allowed(search_only_capsule, tiny_capsule, tmp_path):
    def search(built, k):
        return _in_process(["search", str(built.path), "What is Python?", "-k", str(k), "--json", *_keys(built),
                       "--store", str(tmp_path / "store")], text=True)

    n_chunks = tiny_capsule.result.n_chunks
    assert search_only_capsule.result.n_chunks == n_chunks
    everything = search(tiny_capsule, 1000)  # export allowed: k = n_chunks is an export anyway
    assert everything.returncode == 0 and len(everything.stdout.splitlines()) == n_chunks, everything.stderr
    for k in (1000, 51):
        proc = search(search_only_capsule, k)
        assert proc.returncode == 1, proc.stdout  # was: every chunk
        _assert_one_error_line(proc.stderr, f"search asks for {k} results, this capsule allows at most 50")
        assert json.loads(proc.stdout)["error"] == "rule"
    proc = search(search_only_capsule, 50)
    assert proc.returncode == 0 and len(proc.stdout.splitlines()) == min(50, n_chunks), proc.stderr


# ---------------------------------------------------------------------------
# 7. edge info --memory measures one query's work without spending a use


@pytest.mark.parametrize("max_k", [None, 3])
def test_info_memory_spends_no_rate_limit_use_and_works_with_max_k_below_5(tmp_path, max_k):
    import shutil

    from ...conftest import TINY_DOCS, build_test_capsule

    rules = {"rate_limit": {"optional": False, "max_queries": 1, "window_s": 3600}}
    if max_k is not None:
        rules["query_limits"] = {"optional": False, "max_k": max_k}
    built = build_test_capsule(TINY_DOCS / "good", tmp_path / "limited.capsule", keys_dir=tmp_path / "keys",
                               rules=rules)
    (tmp_path / "config" / "trusted").mkdir(parents=True)  # the device's own trust: uses are counted
    shutil.copy(built.publisher_pub_path, tmp_path / "config" / "trusted")
    env = {"EDGE_CONFIG_DIR": str(tmp_path / "config")}
    base = [str(built.path), "--identity", str(built.device_key_path), "--store", str(tmp_path / "store")]

    human = _child(["info", *base, "--memory"], env=env, text=True)
    assert human.returncode == 0, human.stderr  # was, with max_k 3: search asks for 5 results, at most 3
    assert human.stdout.startswith("budget: ") and "measured after one query" in human.stdout
    as_json = _child(["info", *base, "--memory", "--json"], env=env, text=True)
    assert as_json.returncode == 0, as_json.stderr
    assert json.loads(as_json.stdout)["memory"]["measured"]["rss_bytes"] > 0

    first = _child(["search", base[0], "What is Python?", *base[1:]], env=env, text=True)
    assert first.returncode == 0, first.stderr  # was: query rate limit reached (info had spent the use)
    hits = [line for line in first.stdout.splitlines() if line.startswith("[")]
    assert len(hits) == min(max_k or 5, built.result.n_chunks)  # default k: 5, or max_k when lower
    second = _child(["search", base[0], "What is Python?", *base[1:]], env=env, text=True)
    assert second.returncode == 1
    _assert_one_error_line(second.stderr, "query rate limit reached")


def test_a_configuration_directory_other_users_can_write_is_refused(tmp_path, tiny_capsule):
    # provisioned keys decide what the device trusts: a group-writable folder would let another
    # user plant a publisher key (or a hardware id that meets a `devices` rule)
    config = tmp_path / "config"
    (config / "trusted").mkdir(parents=True)
    (config / "trusted" / "publisher.pub").write_bytes(tiny_capsule.publisher_pub_path.read_bytes())
    env = {"EDGE_CONFIG_DIR": str(config), "EDGE_STORE_DIR": str(tmp_path / "store")}
    args = ("edge", "verify", str(tiny_capsule.path), "--quick")
    assert run_cli(*args, env=env).returncode == 0
    (config / "trusted").chmod(0o777)
    proc = run_cli(*args, env=env)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert proc.stderr.startswith("edge: error: trusted-keys directory ") and "has mode 777" in proc.stderr, proc.stderr
    (config / "trusted").chmod(0o755)
    config.chmod(0o775)
    proc = run_cli(*args, env=env)
    assert proc.returncode == 1 and "configuration directory" in proc.stderr and "mode 775" in proc.stderr, proc.stderr


_ARENAS = r"""
import ctypes, sys, tempfile, threading
from edge._process import single_malloc_arena
if sys.argv[1] == "one":
    assert single_malloc_arena() is True
libc = ctypes.CDLL(None)
libc.malloc.restype = ctypes.c_void_p
libc.fopen.restype = ctypes.c_void_p
libc.fopen.argtypes = [ctypes.c_char_p, ctypes.c_char_p]
libc.malloc_info.argtypes = [ctypes.c_int, ctypes.c_void_p]
libc.fclose.argtypes = [ctypes.c_void_p]
kept = []
thread = threading.Thread(target=lambda: kept.append(libc.malloc(1000)))  # a small block: from an arena
thread.start()
thread.join()
with tempfile.NamedTemporaryFile(suffix=".xml") as out:
    handle = libc.fopen(out.name.encode(), b"w")
    libc.malloc_info(0, handle)
    libc.fclose(handle)
    print(open(out.name).read().count("<heap nr="))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc mallopt")
def test_single_malloc_arena_keeps_a_new_thread_in_the_main_arena():
    # glibc gives a new thread an arena of its own, which keeps what the thread frees (the model's
    # loading thread: ~5 MiB RssAnon); after single_malloc_arena() it allocates from the main one.
    counts = {mode: int(subprocess.run([sys.executable, "-c", _ARENAS, mode], capture_output=True, text=True,
                                       check=True, cwd=ROOT).stdout)
              for mode in ("default", "one")}
    assert counts == {"default": 2, "one": 1}
