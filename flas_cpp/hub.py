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
import json
import os
from pathlib import Path
from typing import Iterator

from .bundled import cache_home
from .convert.common import ConversionError

FORMAT_VERSION = 1           # raise when a converter writes something else for the same input
DEFAULT_BASE_QUANT = "Q4_K_M"  # as llama.cpp's -hf


class HubError(ValueError):
    """A repository, file or network problem, said with what to do about it."""


def cache_root() -> Path:
    return cache_home() / "hub" / f"v{FORMAT_VERSION}"


def pull(repo: str, base: str | None = None, revision: str | None = None, flow_outtype: str | None = None,
         progress: bool = True) -> tuple[Path, Path]:
    """(base GGUF, flow GGUF) of a FLAS flow repository, downloaded and converted on first use.

    base: "REPO[:QUANT]", a GGUF repository (the file of that quant, default Q4_K_M) or a
    Hugging Face checkpoint repository (converted to QUANT); default: the flow's model_id."""
    from .convert.flow import DEFAULT_FLOW_OUTTYPE, KNOWN_BASES

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
    flow_config = json.loads(config.read_text())
    base_spec = base or flow_config.get("model_id")
    if not isinstance(base_spec, str) or not base_spec:
        raise HubError(f"{repo}: config.json names no base (model_id); pass --hf-base REPO[:QUANT]")
    base_gguf, base_config = pull_base(base_spec, progress)
    model_id = flow_config.get("model_id")
    if base_config is None and isinstance(model_id, str) and model_id not in KNOWN_BASES:
        # a GGUF base: the flow records its base's facts from the config.json of the checkpoint it names
        mid_commit, mid_files = resolve(model_id, None)
        if "config.json" not in mid_files:
            raise HubError(f"{repo}: its base {model_id} has no config.json to read the flow's base facts from")
        base_config = download(model_id, "config.json", mid_commit)

    out = cache_root() / repo.replace("/", "--") / commit / f"{Path(flow_file).stem}-{outtype}.gguf"
    if not out.is_file():
        from .convert import convert_flow

        flow_st = download(repo, flow_file, commit)
        out.parent.mkdir(parents=True, exist_ok=True)
        convert_flow(flow_st, out, config=config, base_config=base_config, outtype=outtype, progress=progress)
        record(out, repo, commit, flow_file, outtype)
    return base_gguf, out


def pull_base(spec: str, progress: bool) -> tuple[Path, Path | None]:
    """(base GGUF, its config.json if it came from a checkpoint) of "REPO[:QUANT]"."""
    repo, _, quant = spec.partition(":")
    quant = (quant or DEFAULT_BASE_QUANT).upper()
    commit, files = resolve(repo, None)
    ggufs = sorted(f for f in files if f.endswith(".gguf"))
    if ggufs:
        picked = [f for f in ggufs if quant in Path(f).name.upper() and "MMPROJ" not in Path(f).name.upper()]
        if not picked:
            raise HubError(f"{repo} has no {quant} GGUF; it has: {', '.join(ggufs)} (pick one with "
                           f"--hf-base {repo}:<QUANT>)")
        return download(repo, picked[0], commit), None
    if "config.json" not in files or not any(f.endswith(".safetensors") for f in files):
        raise HubError(f"{repo} holds neither GGUF files nor a safetensors checkpoint")
    if "tokenizer.model" not in files:
        raise HubError(f"{repo}'s vocabulary is byte-level BPE (no tokenizer.model), which only llama.cpp's "
                       f"convert_hf_to_gguf.py converts; name a GGUF repository instead: --hf-base "
                       f"<owner>/{repo.split('/')[-1]}-GGUF:{quant}")
    out = cache_root() / repo.replace("/", "--") / commit / f"base-{quant}.gguf"
    config = download(repo, "config.json", commit)  # what a flow of this base is converted with
    if not out.is_file():  # the weights are fetched only to convert them
        from .convert import convert_base

        for f in files:
            if f.endswith((".json", ".safetensors")) or f == "tokenizer.model":
                download(repo, f, commit)
        out.parent.mkdir(parents=True, exist_ok=True)
        convert_base(config.parent, out, quant, progress=progress)
        record(out, repo, commit, "*.safetensors", quant)
    return out, config


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
    import shutil

    d = cache_root() / repo.replace("/", "--")
    if not d.is_dir():
        known = sorted({e["repo"] for e in cached()})
        raise HubError(f"nothing of {repo} is cached; cached: {', '.join(known) or 'nothing'}")
    freed = sum(f.stat().st_size for f in d.rglob("*") if f.is_file())
    shutil.rmtree(d)
    return freed


# ---- huggingface_hub, with its errors said plainly ----------------------------------------------

def resolve(repo: str, revision: str | None) -> tuple[str, list[str]]:
    """(commit, file names) of a repository at a revision; offline: the newest cached snapshot."""
    from huggingface_hub import HfApi, constants

    offline = constants.is_offline_mode() if hasattr(constants, "is_offline_mode") else constants.HF_HUB_OFFLINE
    if offline:
        snapshots = Path(constants.HF_HUB_CACHE) / f"models--{repo.replace('/', '--')}" / "snapshots"
        cached = sorted(snapshots.glob("*"), key=lambda p: p.stat().st_mtime) if snapshots.is_dir() else []
        if revision is not None:
            cached = [p for p in cached if p.name == revision]
        if not cached:
            raise HubError(f"HF_HUB_OFFLINE is set and nothing of {repo} is cached; run once with the network up")
        snap = cached[-1]
        return snap.name, [str(p.relative_to(snap)) for p in snap.rglob("*") if p.is_file() or p.is_symlink()]
    with hub_errors(repo):
        info = HfApi().model_info(repo, revision=revision)
    return info.sha, [s.rfilename for s in info.siblings or []]


def download(repo: str, filename: str, commit: str) -> Path:
    from huggingface_hub import hf_hub_download

    with hub_errors(repo, filename):
        return Path(hf_hub_download(repo, filename, revision=commit))


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
        raise HubError(f"{repo} has no file {filename}") from None
    except LocalEntryNotFoundError:
        raise HubError(f"cannot reach {endpoint} and {repo}/{filename} is not cached; check the network, or "
                       "set HF_HUB_OFFLINE=1 to use only what is cached") from None
    except ConversionError:
        raise
    except Exception as e:  # noqa: BLE001 (the HTTP client's own errors: its module varies by version)
        if not isinstance(e, OSError) and not type(e).__module__.startswith(("httpx", "requests", "urllib3")):
            raise
        raise HubError(f"cannot reach {endpoint} for {repo} ({type(e).__name__}: {e}); HF_HUB_OFFLINE=1 uses only "
                       "what is cached") from None
