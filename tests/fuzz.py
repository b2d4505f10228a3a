"""Fuzzing of what flas-cpp reads: mutated flow GGUFs through the C++ loader (flas_flow_validate),
and mutated safetensors headers and config.json files through the flow and base converters.

A case passes when the loader returns, or raises ValueError (the converters' ConversionError and
SafetensorsError are ValueErrors) or RuntimeError with a message. Anything else fails it: another
exception type, an empty message, a crash (a signal), a hang. Cases run in worker subprocesses,
so a crash is a failing case, not a dead run: the parent restarts a worker after the case that
killed it. Every case is a pure function of (kind, seed, index), so a failure is reproduced with
`python tests/fuzz.py KIND --seed S --start I --cases 1`.

    python tests/fuzz.py flow --cases 10000 --seed 1     (CI: .ci/run)
    python tests/fuzz.py convert-flow --cases 2000 --seed 1
"""

from __future__ import annotations

import argparse
import json
import os
import random
import struct
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

KINDS = ("flow", "convert-flow", "convert-base", "selftest")  # selftest: proves a crash is caught
HANG_SECONDS = 60
WORKER_MEMORY = 6 << 30  # address space of a worker: the tiny models need well under 1 GB

EXTREMES_32 = [0, 1, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFF, 0xFFFFFFFE, 0x40000000, 13]
EXTREMES_64 = [0, 1, 0x7FFFFFFFFFFFFFFF, 0x8000000000000000, 0xFFFFFFFFFFFFFFFF, 1 << 40, 1 << 32, 2**31]
FLOAT_BITS = [0x7FC00000, 0x7F800000, 0xFF800000, 0x00000000, 0x80000000, 0x7F7FFFFF, 0x00000001, 0xBF800000]


# ---------------------------------------------------------------------------------------------
# mutations
# ---------------------------------------------------------------------------------------------

@dataclass
class GGUFLayout:
    """Where a flow GGUF keeps what: each key's value and type, each tensor's info, the data."""
    data_offset: int
    values: list[tuple[int, int, int]] = field(default_factory=list)   # (type offset, value offset, value size)
    infos: list[tuple[int, int]] = field(default_factory=list)         # (n_dims offset, n_dims)

    @staticmethod
    def of(path: Path) -> "GGUFLayout":
        from gguf import GGUFReader

        r = GGUFReader(path)
        lay = GGUFLayout(int(r.data_offset))
        for f in r.fields.values():
            if f.name.startswith("GGUF."):
                continue
            key_len = len(f.name.encode())
            type_off = f.offset + 8 + key_len
            size = sum(p.nbytes for p in f.parts[3:])
            lay.values.append((type_off, type_off + 4, size))
        for t in r.tensors:
            name_len = len(t.name.encode())
            lay.infos.append((t.field.offset + 8 + name_len, len(t.shape)))
        return lay


def mutate_gguf(data: bytes, lay: GGUFLayout, rng: random.Random) -> tuple[bytes, str]:
    """One or more mutations of a valid flow GGUF; returns the bytes and what was done."""
    b = bytearray(data)
    done = []
    truncate = None  # last, so that the other mutations find their offsets
    for _ in range(rng.choice((1, 1, 1, 2, 3))):
        kind = rng.randrange(9)
        if kind == 0:    # random bytes anywhere in the header
            for _ in range(rng.randint(1, 8)):
                i = rng.randrange(lay.data_offset)
                b[i] = rng.randrange(256)
            done.append("header bytes")
        elif kind == 1:  # the tensor or key count
            off = rng.choice((8, 16))
            struct.pack_into("<Q", b, off, rng.choice(EXTREMES_64 + [rng.randrange(1 << 64)]))
            done.append(f"count at {off}")
        elif kind == 2:  # truncated
            truncate = rng.randrange(len(data))
            done.append(f"truncated to {truncate}")
        elif kind == 3:  # a key's type
            t_off, _, _ = rng.choice(lay.values)
            struct.pack_into("<I", b, t_off, rng.randrange(16) if rng.random() < 0.8 else rng.randrange(1 << 32))
            done.append(f"key type at {t_off}")
        elif kind == 4:  # a key's value
            _, v_off, size = rng.choice(lay.values)
            if size == 4:
                struct.pack_into("<I", b, v_off, rng.choice(EXTREMES_32 + FLOAT_BITS))
            elif size == 1:
                b[v_off] = rng.randrange(256)
            elif size >= 8:  # a string: its length
                struct.pack_into("<Q", b, v_off, rng.choice(EXTREMES_64))
            done.append(f"key value at {v_off}")
        elif kind == 5:  # a tensor's dimension count, a dimension, its type or its data offset
            nd_off, nd = rng.choice(lay.infos)
            which = rng.randrange(4)
            if which == 0:
                struct.pack_into("<I", b, nd_off, rng.choice([0, 1, 2, 3, 4, 5, 0xFFFFFFFF]))
            elif which == 1:
                struct.pack_into("<q", b, nd_off + 4 + 8 * rng.randrange(nd),
                                 rng.choice([0, -1, 1, 2, 3, 63, 129, 1 << 31, 1 << 40, (1 << 63) - 1]))
            elif which == 2:
                struct.pack_into("<I", b, nd_off + 4 + 8 * nd, rng.choice(list(range(42)) + [0xFFFFFFFF]))
            else:
                struct.pack_into("<Q", b, nd_off + 8 + 8 * nd, rng.choice(EXTREMES_64 + [32, 31]))
            done.append(f"tensor info {which} at {nd_off}")
        elif kind == 6:  # non-finite or huge values in the data
            for _ in range(rng.randint(1, 4)):
                i = lay.data_offset + 4 * rng.randrange((len(b) - lay.data_offset) // 4)
                struct.pack_into("<I", b, i, rng.choice(FLOAT_BITS))
            done.append("data values")
        elif kind == 7:  # the magic or the version
            struct.pack_into("<I", b, rng.choice((0, 4)), rng.choice(EXTREMES_32))
            done.append("magic/version")
        else:            # garbage appended, or a header region repeated
            if rng.random() < 0.5:
                b += bytes(rng.randrange(256) for _ in range(rng.randint(1, 64)))
            else:
                i = rng.randrange(lay.data_offset)
                j = min(lay.data_offset, i + rng.randint(1, 64))
                b[j:j] = b[i:j]
            done.append("garbage")
    if truncate is not None:
        del b[truncate:]
    return bytes(b), ", ".join(done)


def mutate_json(text: str, rng: random.Random, protected: frozenset[str] = frozenset()) -> tuple[str, str]:
    """A mutated JSON object: keys dropped or given values of wrong types and sizes, or the text broken."""
    if rng.random() < 0.15:  # broken text
        chars = list(text)
        for _ in range(rng.randint(1, 5)):
            chars[rng.randrange(len(chars))] = rng.choice('{}[]",:0x-. \x00é')
        return "".join(chars), "json text"
    obj = json.loads(text)
    done = []
    for _ in range(rng.randint(1, 3)):
        keys = [k for k in obj if k not in protected]
        if not keys:
            break
        k = rng.choice(keys)
        choice = rng.randrange(3)
        if choice == 0:
            del obj[k]
            done.append(f"-{k}")
        else:
            obj[k] = rng.choice([None, -1, 0, 1, 2**31, 2**63, 10**30, -(2**40), 0.5, float("1e308"), "x", "",
                                 [], [1, 2], {}, True, {"a": 1}, [[1]], "NaN", 3.0])
            done.append(f"{k}={obj[k]!r}"[:60])
    return json.dumps(obj), ", ".join(done)


def mutate_safetensors(data: bytes, rng: random.Random) -> tuple[bytes, str]:
    """A mutated safetensors file: its header length, its JSON (dtypes, shapes, offsets, entries)."""
    (n,) = struct.unpack_from("<Q", data, 0)
    header = json.loads(data[8:8 + n])
    body = data[8 + n:]
    kind = rng.randrange(6)
    if kind == 0:
        n_new = rng.choice(EXTREMES_64 + [n - 1, n + 1, 0, len(data)])
        return struct.pack("<Q", n_new) + data[8:], f"header length {n_new}"
    if kind == 1:
        return data[:rng.randrange(len(data))], "truncated"
    names = [k for k in header if k != "__metadata__"]
    name = rng.choice(names)
    info = header[name]
    if kind == 2:
        info["dtype"] = rng.choice(["F32", "F16", "BF16", "I8", "U8", "BOOL", "F64", "Q4", "", 7, None])
        what = f"{name} dtype {info['dtype']!r}"
    elif kind == 3:
        shape = list(info["shape"])
        choice = rng.randrange(4)
        if choice == 0 and shape:
            shape[rng.randrange(len(shape))] = rng.choice([0, -1, 1, 3, 2**31, 2**62, "8", None, 1.5])
        elif choice == 1:
            shape = shape[::-1]
        elif choice == 2:
            shape = shape + [1]
        else:
            shape = []
        info["shape"] = shape
        what = f"{name} shape {shape!r}"[:80]
    elif kind == 4:
        begin, end = info["data_offsets"]
        info["data_offsets"] = rng.choice([[end, begin], [begin, end + 4], [-8, end], [begin, 2**63], [begin], "x",
                                           [begin + 2, end + 2]])
        what = f"{name} offsets {info['data_offsets']!r}"
    else:
        if rng.random() < 0.5:
            del header[name]
            what = f"-{name}"
        else:
            header[name + ".extra"] = dict(info)
            what = f"+{name}.extra"
    head = json.dumps(header).encode()
    return struct.pack("<Q", len(head)) + head + body, what


# ---------------------------------------------------------------------------------------------
# one case
# ---------------------------------------------------------------------------------------------

class Fixtures:
    """The valid inputs every case mutates, made once per worker (deterministic models)."""

    def __init__(self, root: Path, kind: str):
        if kind == "selftest":
            return
        from flas_cpp.convert import convert_flow
        from flas_cpp.testing.make_models import make_models

        self.root = root
        marker = root / "ready"
        if not marker.exists():
            make_models(root / "tiny", "tiny", seed=0, quiet=True)
            convert_flow(root / "tiny" / "flow" / "flow.safetensors", root / "flow.gguf",
                         base_config=root / "tiny" / "base" / "config.json", outtype="f32", progress=False)
            marker.write_text("ok")
        self.base_dir = root / "tiny" / "base"
        self.flow_st = root / "tiny" / "flow" / "flow.safetensors"
        self.flow_gguf = root / "flow.gguf"
        self.flow_bytes = self.flow_gguf.read_bytes()
        self.layout = GGUFLayout.of(self.flow_gguf)


def run_case(kind: str, fx: Fixtures, seed: int, index: int, work: Path) -> str:
    """Runs one case; returns "ok: ..." or raises what the loader raised."""
    rng = random.Random(f"{kind}/{seed}/{index}")
    if kind == "flow":
        from flas_cpp._native import core

        data, what = mutate_gguf(fx.flow_bytes, fx.layout, rng)
        path = work / "case.gguf"
        path.write_bytes(data)
        return checked(what, lambda: core().validate_flow(str(path)))
    if kind == "convert-flow":
        from flas_cpp.convert import convert_flow

        d = work / "flow"
        d.mkdir(exist_ok=True)
        st = (fx.flow_st.read_bytes(), "")
        cfg = ((fx.flow_st.parent / "config.json").read_text(), "")
        base_cfg = ((fx.base_dir / "config.json").read_text(), "")
        target = rng.randrange(3)
        if target == 0:
            st = mutate_safetensors(st[0], rng)
        elif target == 1:
            cfg = mutate_json(cfg[0], rng)
        else:
            base_cfg = mutate_json(base_cfg[0], rng)
        (d / "flow.safetensors").write_bytes(st[0])
        (d / "config.json").write_text(cfg[0])
        (d / "base.json").write_text(base_cfg[0])
        what = ["safetensors", "config.json", "base config.json"][target] + ": " + (st[1] or cfg[1] or base_cfg[1])
        return checked(what, lambda: convert_flow(d / "flow.safetensors", d / "out.gguf", base_config=d / "base.json",
                                                  outtype="f32", force=True, progress=False))
    if kind == "convert-base":
        from flas_cpp.convert import convert_base

        d = work / "base"
        if not d.exists():
            d.mkdir()
            for f in fx.base_dir.iterdir():
                (d / f.name).write_bytes(f.read_bytes())
        st_name = next(p.name for p in fx.base_dir.glob("*.safetensors"))
        (d / st_name).write_bytes((fx.base_dir / st_name).read_bytes())
        (d / "config.json").write_text((fx.base_dir / "config.json").read_text())
        if rng.random() < 0.5:
            data, what = mutate_safetensors((fx.base_dir / st_name).read_bytes(), rng)
            (d / st_name).write_bytes(data)
            what = "safetensors: " + what
        else:
            text, what = mutate_json((fx.base_dir / "config.json").read_text(), rng)
            (d / "config.json").write_text(text)
            what = "config.json: " + what
        return checked(what, lambda: convert_base(d, work / "base-out.gguf", "f32", force=True, progress=False))
    if kind == "selftest":  # every third case kills its worker, one raises the wrong exception
        if index % 3 == 1:
            os.abort()
        return checked("selftest", lambda: [][0] if index == 3 else None)
    raise ValueError(f"unknown kind {kind}")


def checked(what: str, fn) -> str:
    try:
        fn()
        return f"ok (loaded) [{what}]"
    except (ValueError, RuntimeError) as e:
        if not str(e).strip():
            raise AssertionError(f"{type(e).__name__} without a message [{what}]") from e
        return f"ok ({type(e).__name__}: {str(e)[:100]}) [{what}]"
    except Exception as e:
        raise AssertionError(f"{type(e).__name__}: {e} [{what}]") from e


# ---------------------------------------------------------------------------------------------
# workers and the parent
# ---------------------------------------------------------------------------------------------

def worker(kind: str, seed: int, start: int, stop: int, root: Path) -> None:
    import resource

    # a case that allocates without bound fails with MemoryError instead of exhausting the machine
    # (not under AddressSanitizer, whose shadow memory is a huge reservation of address space)
    if "asan" not in os.environ.get("LD_PRELOAD", ""):
        resource.setrlimit(resource.RLIMIT_AS, (WORKER_MEMORY, WORKER_MEMORY))
    fx = Fixtures(root, kind)
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(start, stop):
            print(f"case {i}", flush=True)
            try:
                outcome = run_case(kind, fx, seed, i, Path(tmp))
                print(f"done {i} {outcome}".replace("\n", " "), flush=True)
            except AssertionError as e:
                print(f"fail {i} {e}".replace("\n", " "), flush=True)


@dataclass
class Report:
    kind: str
    seed: int
    cases: int = 0
    loaded: int = 0
    refused: int = 0
    failures: list[str] = field(default_factory=list)
    seconds: float = 0.0


def fuzz(kind: str, cases: int, seed: int, start: int = 0, root: Path | None = None) -> Report:
    """Runs cases start .. start+cases-1 in worker subprocesses; the report counts every outcome."""
    root = root or Path(tempfile.mkdtemp(prefix="flas-fuzz-"))
    rep = Report(kind, seed)
    t0 = time.perf_counter()
    i, stop = start, start + cases
    env = {**os.environ, "PYTHONFAULTHANDLER": "0"}
    while i < stop:
        err = tempfile.TemporaryFile()  # the loaders' log: a pipe could fill up and stall the worker
        proc = subprocess.Popen([sys.executable, str(Path(__file__).resolve()), kind, "--worker", "--seed", str(seed),
                                 "--start", str(i), "--cases", str(stop - i), "--root", str(root)],
                                stdout=subprocess.PIPE, stderr=err, text=True, errors="replace", env=env,
                                cwd=tempfile.gettempdir())
        current = None
        import selectors

        sel = selectors.DefaultSelector()
        sel.register(proc.stdout, selectors.EVENT_READ)
        hung = False
        while True:
            if not sel.select(timeout=HANG_SECONDS):
                hung = True
                proc.kill()
                break
            line = proc.stdout.readline()
            if not line:
                break
            word, _, rest = line.rstrip("\n").partition(" ")
            n, _, outcome = rest.partition(" ")
            if word == "case":
                current = int(n)
            elif word in ("done", "fail"):
                rep.cases += 1
                current = None
                i = int(n) + 1
                if word == "fail":
                    rep.failures.append(f"case {n}: {outcome}")
                elif outcome.startswith("ok (loaded)"):
                    rep.loaded += 1
                else:
                    rep.refused += 1
        proc.wait()
        sel.close()
        err.seek(0)
        log = err.read().decode(errors="replace")
        err.close()
        if current is not None:  # the worker died (or hung) in this case
            rep.cases += 1
            why = "hung" if hung else f"crashed (exit {proc.returncode})"
            rep.failures.append(f"case {current}: {why} " + log[-400:].replace("\n", " "))
            i = current + 1
        elif proc.returncode != 0 and i < stop:
            raise RuntimeError(f"the fuzz worker failed outside a case (exit {proc.returncode}): {log[-2000:]}")
    rep.seconds = time.perf_counter() - t0
    return rep


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("kind", choices=KINDS)
    ap.add_argument("--cases", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--start", type=int, default=0)
    ap.add_argument("--root", type=Path, help="where the valid inputs are made (default: a new temporary directory)")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.worker:
        worker(a.kind, a.seed, a.start, a.start + a.cases, a.root)
        return 0
    rep = fuzz(a.kind, a.cases, a.seed, a.start, a.root)
    print(f"fuzz {rep.kind}: {rep.cases} cases, seed {rep.seed}: {rep.refused} refused with a message, {rep.loaded} "
          f"loaded, {len(rep.failures)} failures, {rep.seconds:.0f} s")
    for f in rep.failures[:50]:
        print("  " + f)
    return 1 if rep.failures or rep.cases != a.cases else 0


if __name__ == "__main__":
    sys.exit(main())
