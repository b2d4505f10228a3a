"""FLAS flow repositories on the Hugging Face hub -> a base GGUF and a flow GGUF, in one call
(`--hf REPO`, `FlasModel.from_pretrained`).

Every download goes through huggingface_hub (its cache, revisions, resume, HF_TOKEN,
HF_HUB_OFFLINE, HF_ENDPOINT, its progress bars). What flas-cpp converts is cached apart, under a
path made of what it came from: the converters' format version, the repository, the commit the
hub resolved, the file and the output type. A new upstream commit converts again; an unchanged
one never does, and with HF_HUB_OFFLINE=1 a cached model starts without a request.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, NamedTuple

from .bundled import cache_home
from .convert.common import ConversionError, max_bytes_per_param, size_text

FORMAT_VERSION = 1           # raise when a converter writes something else for the same input
DEFAULT_BASE_QUANT = "Q4_K_M"  # as llama.cpp's -hf


class HubError(ValueError):
    """A repository, file or network problem, said with what to do about it."""


INTERRUPTED = "interrupted; the next run resumes the download where it stopped (nothing half-converted is kept)"


def cache_root() -> Path:
    return cache_home() / "hub" / f"v{FORMAT_VERSION}"


def converted_dir(repo: str) -> Path:
    """Where what was converted from repo lives, a folder per commit inside."""
    return cache_root() / repo.replace("/", "--")


def hub_storage(repo: str) -> Path:
    """huggingface_hub's cache folder of a model repository (blobs/, snapshots/, refs/)."""
    from huggingface_hub import constants
    from huggingface_hub.file_download import repo_folder_name

    return Path(constants.HF_HUB_CACHE) / repo_folder_name(repo_id=repo, repo_type="model")


def pull(repo: str, base: str | None = None, revision: str | None = None, flow_outtype: str | None = None,
         progress: bool = True) -> tuple[Path, Path]:
    """(base GGUF, flow GGUF) of a FLAS flow repository, downloaded and converted on first use.

    base: "REPO[:QUANT]", a GGUF repository (the file of that quant, default Q4_K_M) or a
    Hugging Face checkpoint repository (converted to QUANT); default: the flow's model_id.
    Everything that can be checked from small files (the configs, the base's family, the disk
    space) is checked before any weights are downloaded."""
    from .convert.flow import DEFAULT_FLOW_OUTTYPE, KNOWN_BASES, base_facts_from_config

    outtype = (flow_outtype or DEFAULT_FLOW_OUTTYPE).lower()
    commit, files = resolve(repo, revision)
    flow_file = f"{repo.split('/')[-1]}.safetensors"
    if flow_file not in files:
        found = [f for f in files if f.endswith(".safetensors")]
        if len(found) != 1 or "config.json" not in files:
            raise HubError(f"{repo} is not a FLAS flow repository: it should hold {flow_file} (or one .safetensors) "
                           f"and config.json; it holds {', '.join(sorted(files)) or 'nothing'}")
        flow_file = found[0]
    config = download(repo, "config.json", commit)
    model_id = json.loads(config.read_text()).get("model_id")
    base_spec = base or model_id
    if not isinstance(base_spec, str) or not base_spec:
        raise HubError(f"{repo}: config.json names no base (model_id); pass --hf-base REPO[:QUANT]")
    src = plan_base(base_spec)
    base_config = src.config
    if base_config is None and isinstance(model_id, str) and model_id not in KNOWN_BASES:
        # a GGUF base: the flow records its base's facts from the config.json of the checkpoint it names
        mid_commit, mid_files = resolve(model_id, None)
        if "config.json" not in mid_files:
            raise HubError(f"{repo}: its base {model_id} has no config.json to read the flow's base facts from")
        base_config = download(model_id, "config.json", mid_commit)
    if base_config is not None:
        try:
            base_facts_from_config(base_config)  # a family the runtime does not steer stops here, before any weights
        except ConversionError as e:
            raise HubError(f"{repo} steers {model_id or base_spec}, which flas-cpp cannot run: {e}") from None

    out = converted_dir(repo) / commit / f"{Path(flow_file).stem}-{outtype}.gguf"
    wanted = [] if out.is_file() else [Wanted(repo, commit, flow_file, files[flow_file], outtype, out)]
    check_disk_space([*src.wanted, *wanted])
    base_gguf = fetch_base(src, progress)
    if not out.is_file():
        flow_st = download(repo, flow_file, commit)
        out.parent.mkdir(parents=True, exist_ok=True)
        convert(progress, "flow", str(flow_st), "-o", str(out), "--config", str(config),
                *(["--base-config", str(base_config)] if base_config is not None else []), "--outtype", outtype)
        record(out, repo, commit, flow_file, outtype)
    return base_gguf, out


def convert(progress: bool, *args: str) -> None:
    """`flas-convert ARGS` in a process of its own, its progress shown: what the conversion
    takes (llama.cpp's quantizer maps the whole stage file) goes back to the system before the
    caller, often a server, loads the model, and its peak is flas-convert's own. Its error is
    raised here as a ConversionError."""
    cmd = [sys.executable, "-m", "flas_cpp.convert.cli", *args, *([] if progress else ["--no-progress"])]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    assert proc.stderr is not None
    tail = b""
    while chunk := proc.stderr.read1(1 << 16):
        if progress:
            sys.stderr.buffer.write(chunk)
            sys.stderr.flush()
        tail = (tail + chunk)[-8192:]
    code = proc.wait()
    if code == 130:
        raise KeyboardInterrupt
    if code != 0:
        lines = tail.decode(errors="replace").strip().splitlines() or [f"exited with status {code}"]
        raise ConversionError(lines[-1].split(": error: ", 1)[-1])


class Wanted(NamedTuple):
    """A file still to download, and what it is converted into (for the disk-space check)."""
    repo: str
    commit: str
    file: str
    bytes: int
    outtype: str | None       # None: used as it is (a GGUF) or not converted by itself (a config)
    out: Path | None          # the converted file it goes into


@dataclass
class BaseSource:
    """Where a base comes from: a GGUF file of a repository, or a checkpoint converted to `quant`."""
    repo: str
    commit: str
    quant: str
    gguf: str | None          # the repository's GGUF file, or None for a checkpoint
    out: Path | None          # the converted checkpoint in the cache
    config: Path | None       # the checkpoint's config.json (what its flows are converted with)
    wanted: list[Wanted]      # what must still be downloaded (and converted)


def plan_base(spec: str) -> BaseSource:
    """What "REPO[:QUANT]" needs, from the repository's listing and its config.json alone."""
    repo, _, quant = spec.partition(":")
    quant = (quant or DEFAULT_BASE_QUANT).upper()
    commit, files = resolve(repo, None)
    ggufs = sorted(f for f in files if f.endswith(".gguf"))
    if ggufs:
        picked = [f for f in ggufs if quant in Path(f).name.upper() and "MMPROJ" not in Path(f).name.upper()]
        if not picked:
            raise HubError(f"{repo} has no {quant} GGUF; it has: {', '.join(ggufs)} (pick one with "
                           f"--hf-base {repo}:<QUANT>)")
        return BaseSource(repo, commit, quant, picked[0], None, None,
                          [Wanted(repo, commit, picked[0], files[picked[0]], None, None)])
    if "config.json" not in files or not any(f.endswith(".safetensors") for f in files):
        raise HubError(f"{repo} holds neither GGUF files nor a safetensors checkpoint")
    if "tokenizer.model" not in files:
        raise HubError(f"{repo}'s vocabulary is byte-level BPE (no tokenizer.model), which only llama.cpp's "
                       f"convert_hf_to_gguf.py converts; name a GGUF repository instead: --hf-base "
                       f"<owner>/{repo.split('/')[-1]}-GGUF:{quant}")
    out = converted_dir(repo) / commit / f"base-{quant}.gguf"
    config = download(repo, "config.json", commit)  # what a flow of this base is converted with
    wanted = [] if out.is_file() else [  # the weights are fetched only to convert them
        Wanted(repo, commit, f, files[f], *((quant, out) if f.endswith(".safetensors") else (None, None)))
        for f in files if f.endswith((".json", ".safetensors")) or f == "tokenizer.model"]
    return BaseSource(repo, commit, quant, None, out, config, wanted)


def fetch_base(src: BaseSource, progress: bool) -> Path:
    if src.gguf is not None:
        return download(src.repo, src.gguf, src.commit)
    assert src.out is not None and src.config is not None
    if not src.out.is_file():
        for w in src.wanted:
            download(w.repo, w.file, w.commit)
        src.out.parent.mkdir(parents=True, exist_ok=True)
        convert(progress, "base", str(src.config.parent), "-o", str(src.out), "--outtype", src.quant)
        record(src.out, src.repo, src.commit, "*.safetensors", src.quant)
    return src.out


def check_disk_space(wanted: list[Wanted]) -> None:
    """Stops before the first download when the downloads plus the conversions cannot fit."""
    from huggingface_hub import constants, try_to_load_from_cache

    need: dict[int, list] = {}  # filesystem -> [bytes, a directory on it]

    def add(directory: Path, n: float) -> None:
        d = directory
        while not d.exists():
            d = d.parent
        entry = need.setdefault(os.stat(d).st_dev, [0.0, d])
        entry[0] += n

    for w in wanted:
        if not isinstance(try_to_load_from_cache(w.repo, w.file, revision=w.commit), str):
            add(Path(constants.HF_HUB_CACHE), w.bytes)
        if w.outtype is not None and w.out is not None:
            add(w.out.parent, w.bytes / 2 * max_bytes_per_param(w.outtype))  # a checkpoint: 2 bytes a parameter or more
    for n, d in need.values():
        free = shutil.disk_usage(d).free
        if n > free:
            raise HubError(f"not enough disk space on {d}: the downloads and conversions need about {size_text(n)}, "
                           f"{size_text(free)} are free; free some space (`flas-convert list` and `flas-convert rm` "
                           "show and remove converted models, `hf cache rm` downloaded ones) or point HF_HOME and "
                           "FLAS_CPP_CACHE at a larger disk")


def record(out: Path, repo: str, commit: str, file: str, outtype: str) -> None:
    """What a cached file came from, beside it (read by `flas-convert list`)."""
    out.with_suffix(".json").write_text(json.dumps({"repo": repo, "commit": commit, "file": file,
                                                    "outtype": outtype, "format": FORMAT_VERSION}))


def cached() -> list[dict]:
    """Every converted file in the cache: repo, commit, file, outtype, path, bytes."""
    out = []
    for manifest in sorted(cache_root().glob("*/*/*.json")):
        gguf = manifest.with_suffix(".gguf")
        if gguf.is_file():
            out.append({**json.loads(manifest.read_text()), "path": str(gguf), "bytes": gguf.stat().st_size})
    return out


def remove(repo: str) -> int:
    """Deletes what was converted from repo (every commit); the bytes freed. The downloads stay in
    huggingface_hub's cache (`hf cache rm` removes those)."""
    d = converted_dir(repo)
    if not d.is_dir():
        raise HubError(f"nothing of {repo} is cached; cached: {', '.join(cached_repos()) or 'nothing'}")
    freed = sum(f.stat().st_size for f in d.rglob("*") if f.is_file())
    shutil.rmtree(d)
    return freed


# ---- huggingface_hub, with its errors said plainly ----------------------------------------------

def resolve(repo: str, revision: str | None) -> tuple[str, dict[str, int]]:
    """(commit, {file name: bytes}) of a repository at a revision; offline: the newest cached snapshot."""
    if offline():
        snapshots = hub_storage(repo) / "snapshots"
        cached = sorted(snapshots.glob("*"), key=lambda p: p.stat().st_mtime) if snapshots.is_dir() else []
        if revision is not None:
            cached = [p for p in cached if p.name == revision]
        if not cached:
            raise HubError(f"HF_HUB_OFFLINE is set and nothing of {repo} is cached; run once with the network up"
                           f" ({what_is_cached()})")
        snap = cached[-1]
        return snap.name, {str(p.relative_to(snap)): p.stat().st_size for p in snap.rglob("*") if p.is_file()}
    from huggingface_hub import HfApi  # not offline: its import is a tenth of a second of a cached start

    with hub_errors(repo):
        info = HfApi().model_info(repo, revision=revision, files_metadata=True)
    return info.sha, {s.rfilename: s.size or 0 for s in info.siblings or []}


def offline() -> bool:
    from huggingface_hub import constants

    return constants.is_offline_mode() if hasattr(constants, "is_offline_mode") else constants.HF_HUB_OFFLINE


def download(repo: str, filename: str, commit: str) -> Path:
    """A file of the repository at a commit, from huggingface_hub's cache or downloaded into it; a
    fresh download is checked against the hub's checksum before anything reads it."""
    from huggingface_hub import hf_hub_download, try_to_load_from_cache

    cached = try_to_load_from_cache(repo, filename, revision=commit)
    if isinstance(cached, str):
        return Path(cached)
    fresh = True
    if filename.endswith((".safetensors", ".gguf")) and not offline():
        with hub_errors(repo, filename):
            fresh = not download_resumable(repo, filename, commit)
    with hub_errors(repo, filename):
        path = Path(hf_hub_download(repo, filename, revision=commit))
    if fresh:
        verify(repo, filename, path)
    return path


def download_resumable(repo: str, filename: str, commit: str) -> bool:
    """Downloads a weights file into huggingface_hub's cache so that an interrupted run's next run
    resumes it: huggingface_hub resumes a broken connection within a run, but since its 1.x it
    keeps no partial file between runs (each process downloads to a file of its own, removed on
    failure). This keeps one, named by the file's sha256 beside the blob it becomes, appends to it
    with huggingface_hub's own http_get, checks the whole file against that sha256, then files it
    as huggingface_hub does (blobs/<sha256>, snapshots/<commit>/<file> linking to it). False when
    the file has no sha256 on the hub (not an LFS file): huggingface_hub downloads it then."""
    from filelock import FileLock
    from huggingface_hub import get_hf_file_metadata, hf_hub_url
    from huggingface_hub.file_download import http_get
    from huggingface_hub.utils import build_hf_headers

    meta = get_hf_file_metadata(hf_hub_url(repo, filename, revision=commit))
    if meta.etag is None or len(meta.etag) != 64:
        return False
    storage = hub_storage(repo)
    blob = storage / "blobs" / meta.etag
    partial = blob.with_name(f"{meta.etag}.flas-partial")
    blob.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(f"{partial}.lock"):
        if not blob.is_file():
            with open(partial, "ab") as f:
                if meta.size is not None and f.tell() > meta.size:  # not a prefix of this file: start again
                    f.truncate(0)
                http_get(meta.location, f, resume_size=f.tell(), headers=build_hf_headers(),
                         expected_size=meta.size, displayed_filename=filename)
            check_sha256(repo, filename, partial, meta.etag)
            os.replace(partial, blob)
        link = storage / "snapshots" / commit / filename
        if not link.exists():
            link.parent.mkdir(parents=True, exist_ok=True)
            os.symlink(os.path.relpath(blob, link.parent), link)
    return True


def verify(repo: str, filename: str, path: Path) -> None:
    """huggingface_hub names a blob by the hub's ETag: the sha256 of an LFS file, the git blob
    sha1 of another; it checks a download's size, not its content. A mismatch deletes the file."""
    blob = Path(os.path.realpath(path))
    want = blob.name if blob.parent.name == "blobs" else ""
    if len(want) in (40, 64):  # else no checksum is known (a cache without symlinks)
        try:
            check_sha256(repo, filename, blob, want)
        finally:
            if not blob.exists():
                path.unlink(missing_ok=True)


def check_sha256(repo: str, filename: str, file: Path, want: str) -> None:
    """Deletes file, and says so, unless its content has the hub's checksum `want` (sha256, or for
    a file outside LFS the git blob sha1)."""
    h = hashlib.sha256() if len(want) == 64 else hashlib.sha1(f"blob {file.stat().st_size}\0".encode())
    with open(file, "rb") as f:
        while chunk := f.read(1 << 24):
            h.update(chunk)
    if h.hexdigest() != want:
        file.unlink(missing_ok=True)
        raise HubError(f"{repo}/{filename}: the downloaded file does not match the hub's checksum ({h.name} "
                       f"{h.hexdigest()[:16]}... instead of {want[:16]}...); it was deleted, run again to download "
                       "it anew")


def weights_of(repo: str) -> str:
    """"; it has: ..." with the repository's .safetensors and .gguf files, for an error message."""
    from huggingface_hub import HfApi

    try:
        names = sorted(f for f in HfApi().list_repo_files(repo) if f.endswith((".safetensors", ".gguf")))
    except Exception:  # noqa: BLE001 (only a hint in a message that is already an error)
        return ""
    return f"; it has: {', '.join(names) or 'no .safetensors or .gguf file'}"


def cached_repos() -> list[str]:
    return sorted({e["repo"] for e in cached()})


def what_is_cached() -> str:
    repos = cached_repos()
    return f"converted models cached: {', '.join(repos)}" if repos else "no converted model is cached"


@contextlib.contextmanager
def hub_errors(repo: str, filename: str | None = None) -> Iterator[None]:
    from huggingface_hub import constants
    from huggingface_hub.errors import (EntryNotFoundError, GatedRepoError, LocalEntryNotFoundError,
                                        RepositoryNotFoundError, RevisionNotFoundError)

    endpoint = constants.ENDPOINT
    try:
        yield
    except GatedRepoError:
        raise HubError(f"{repo} is gated: accept its license at {endpoint}/{repo} with your account, then set "
                       "HF_TOKEN to a token of that account") from None
    except RepositoryNotFoundError:
        raise HubError(f"no repository {repo} on {endpoint} (if it is private, set HF_TOKEN)") from None
    except RevisionNotFoundError as e:
        raise HubError(f"{repo}: no such revision ({e})") from None
    except EntryNotFoundError:
        raise HubError(f"{repo} has no file {filename}{weights_of(repo)}") from None
    except LocalEntryNotFoundError:
        raise HubError(f"cannot reach {endpoint} and {repo}/{filename} is not cached; check the network, or "
                       f"set HF_HUB_OFFLINE=1 to use only what is cached ({what_is_cached()})") from None
    except ConversionError:
        raise
    except Exception as e:  # noqa: BLE001 (the HTTP client's own errors: its module varies by version)
        if not isinstance(e, OSError) and not type(e).__module__.startswith(("httpx", "requests", "urllib3")):
            raise
        raise HubError(f"cannot reach {endpoint} for {repo} ({type(e).__name__}: {e}); HF_HUB_OFFLINE=1 uses only "
                       f"what is cached ({what_is_cached()})") from None
