"""Where the weights come from: a local folder, or `hf:REPO[@REV]` on the Hugging Face Hub.

A hub source is fetched through `huggingface_hub` (HEAD for metadata, its streaming GET for data) into our own
download folder, laid out as `<repo>/snapshots/<commit>/<file>`:

* only the files the pipeline needs: `pipeline.yaml`, then the YAML + `.ckpt` of each requested model, as
  pipeline.yaml names them (everything else in the repo is never requested);
* every file of one fetch comes from one commit (the revision is resolved once);
* resumable: bytes go to `<repo>/partial/<etag>.part`, which survives an interruption (a crash, a cancel raised
  from the progress callback) and is continued with an HTTP Range request next time; a finished file is checked
  against its etag (sha256 for LFS files, git blob sha1 otherwise) before it is moved into place;
* files already in the standard Hugging Face cache (e.g. fetched with `hf download`) are used where they lie;
* offline (`offline=True` or `HF_HUB_OFFLINE=1`): no request at all; the local copies are used, and a missing
  file is named in the error;
* a gated repo without access (HTTP 401/403) becomes a `WeightsError` that says to request access on the
  model page and pass a token.

huggingface_hub's telemetry is switched off for our calls: with it on, the library fetches a registry from the
public Hub once a day, a request we did not ask for (and one a test must never make).
"""
from __future__ import annotations

import hashlib
import os
import re
import urllib.parse
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ..errors import WeightsError
from .locations import default_download_dir
from .release import DEFAULT_MODELS, MODEL_SPECS, PIPELINE_YAML, Release, referenced_name, open_release

DEFAULT_REPO = "facebook/sam-3d-objects"
DEFAULT_REVISION = "main"
DEFAULT_SUBFOLDER = "checkpoints"
DEFAULT_ENDPOINT = "https://huggingface.co"

ProgressFn = Callable[[str, int, "int | None"], None]  # (file name, bytes done, bytes total or None)

_COMMIT = re.compile(r"[0-9a-f]{40}")
_SHA256 = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True)
class HubSource:
    repo: str = DEFAULT_REPO
    revision: str = DEFAULT_REVISION
    subfolder: str = DEFAULT_SUBFOLDER  # folder of the repo that holds pipeline.yaml

    def __str__(self) -> str:
        return f"hf:{self.repo}@{self.revision}"


@dataclass
class FetchedRelease:
    """The local files of one hub release, ready for `open_release`."""

    source: HubSource
    commit: str
    files: dict[str, Path]  # name as pipeline.yaml writes it -> local path
    identities: dict[str, dict[str, Any]] = field(default_factory=dict)  # for cache keys: repo + commit + file
    models: tuple[str, ...] = DEFAULT_MODELS

    def open(self) -> Release:
        return open_release(self.files, models=self.models, identities=self.identities,
                            where=f"hf:{self.source.repo}@{self.commit[:12]}")


def parse_source(spec: str | Path) -> Path | HubSource:
    """`hf:` / `hf:REPO` / `hf:REPO@REV` -> HubSource (default repo facebook/sam-3d-objects); else a local path."""
    if isinstance(spec, Path) or not str(spec).startswith("hf:"):
        return Path(spec).expanduser()
    rest = str(spec)[3:].strip()
    repo, _, revision = rest.partition("@")
    repo = repo.strip("/") or DEFAULT_REPO
    if repo.count("/") != 1 or not all(re.fullmatch(r"[\w.\-]+", p) for p in repo.split("/")):
        raise WeightsError(f"weights source {spec!r} does not name a repository as hf:OWNER/NAME[@REVISION]",
                           f"e.g. hf:{DEFAULT_REPO}")
    return HubSource(repo=repo, revision=revision or DEFAULT_REVISION)


def open_weights(spec: str | Path | HubSource, *, models: Iterable[str] = DEFAULT_MODELS, **fetch_args: Any) -> Release:
    """Open the release a weights source names: a local folder as it is, a hub source after `fetch_release`."""
    source = parse_source(spec) if not isinstance(spec, HubSource) else spec
    if isinstance(source, Path):
        return open_release(source, models=models)
    return fetch_release(source, models=models, **fetch_args).open()


def fetch_release(
    source: HubSource | str = HubSource(),
    *,
    models: Iterable[str] = DEFAULT_MODELS,
    token: str | bool | None = None,
    endpoint: str | None = None,
    download_dir: str | Path | None = None,
    hf_cache_dir: str | Path | None = None,
    offline: bool | None = None,
    progress: ProgressFn | None = None,
) -> FetchedRelease:
    """Make the files of `models` of a hub release available locally and return where they are.

    `token`: a Hugging Face token (None: huggingface_hub's own, e.g. HF_TOKEN or a stored login; False: none).
    `endpoint`: the Hub URL (default HF_ENDPOINT or https://huggingface.co). `offline`: None reads HF_HUB_OFFLINE.
    `progress(file, done, total)` is called as bytes arrive (and once for files already present); it may raise
    (e.g. `Cancelled`) to stop, keeping the partial file for the next attempt.
    """
    if isinstance(source, str):
        parsed = parse_source(source)
        if not isinstance(parsed, HubSource):
            raise WeightsError(f"{source!r} is not a hub source", "use hf:OWNER/NAME[@REVISION]")
        source = parsed
    models = tuple(models)
    for name in models:
        if name not in MODEL_SPECS:
            raise WeightsError(f"unknown model {name!r}", f"choose from {', '.join(MODEL_SPECS)}")
    fetch = _Fetch(
        source=source, models=models, token=token,
        endpoint=(endpoint or os.environ.get("HF_ENDPOINT") or DEFAULT_ENDPOINT).rstrip("/"),
        store=Path(download_dir) if download_dir is not None else default_download_dir(),
        hf_cache_dir=Path(hf_cache_dir) if hf_cache_dir is not None else None,
        progress=progress or (lambda *_: None),
    )
    if offline if offline is not None else _env_offline():
        return fetch.offline()
    return fetch.online()


def download_file(
    repo: str,
    filename: str,
    *,
    revision: str | None = None,
    token: str | bool | None = None,
    endpoint: str | None = None,
    download_dir: str | Path | None = None,
    offline: bool | None = None,
    progress: ProgressFn | None = None,
) -> Path:
    """One file of a hub repository (e.g. MoGe's `model.pt`), with the same resume, checks and offline rules."""
    fetch = _Fetch(
        source=HubSource(repo=repo, revision=revision or DEFAULT_REVISION, subfolder=""), models=(), token=token,
        endpoint=(endpoint or os.environ.get("HF_ENDPOINT") or DEFAULT_ENDPOINT).rstrip("/"),
        store=Path(download_dir) if download_dir is not None else default_download_dir(),
        hf_cache_dir=None, progress=progress or (lambda *_: None),
    )
    return fetch.single(filename, offline if offline is not None else _env_offline())


# ---------------------------------------------------------------------------------------------------------------
# helpers


@dataclass
class _Fetch:
    source: HubSource
    models: tuple[str, ...]
    token: str | bool | None
    endpoint: str
    store: Path
    hf_cache_dir: Path | None
    progress: ProgressFn

    @property
    def repo_dir(self) -> Path:
        return self.store / self.source.repo.replace("/", "--")

    # -- online ---------------------------------------------------------------------------------------------------

    def online(self) -> FetchedRelease:
        if _COMMIT.fullmatch(self.source.revision):  # a pinned commit never changes: local copies suffice
            try:
                return self.offline()
            except WeightsError:
                pass
        try:
            meta = self._metadata(PIPELINE_YAML, self.source.revision)
        except _Unreachable as e:
            try:
                return self.offline()
            except WeightsError as offline_error:
                raise WeightsError(f"cannot reach {self.endpoint} ({e.reason}) and {offline_error.message}",
                                   "check the internet connection, or choose a local weights folder") from None
        commit = meta.commit_hash
        try:
            files = {PIPELINE_YAML: self._ensure(PIPELINE_YAML, meta, commit)}
            for name in self._needed(files[PIPELINE_YAML]):
                files[name] = self._ensure(name, self._metadata(name, commit), commit)
        except _Unreachable as e:
            raise WeightsError(f"lost the connection to {self.endpoint} while fetching hf:{self.source.repo} "
                               f"({e.reason})", "run again to resume the download") from None
        self._write_ref(commit)
        return self._result(commit, files)

    def _metadata(self, name: str, revision: str) -> Any:
        hf = _hf()
        url = hf.hf_hub_url(self.source.repo, self._repo_path(name), revision=revision, endpoint=self.endpoint)
        try:
            meta = hf.get_hf_file_metadata(url, token=self.token, endpoint=self.endpoint)
        except Exception as e:  # mapped to one clear line below
            self._raise_hub_error(e, name)
        if not meta.commit_hash or not meta.etag:
            raise WeightsError(f"{self.endpoint} did not answer like the Hugging Face Hub for {name}",
                               "check HF_ENDPOINT / the endpoint setting and any proxy")
        return meta

    def _ensure(self, name: str, meta: Any, commit: str) -> Path:
        """The local path of `name` at `commit`, downloading (or resuming) it if needed."""
        final = self.repo_dir / "snapshots" / commit / name
        size = meta.size
        if final.is_file() and (size is None or final.stat().st_size == size):
            self.progress(name, final.stat().st_size, final.stat().st_size)
            return final
        cached = self._hf_cache(name, commit)
        if cached is not None and (size is None or cached.stat().st_size == size):
            self.progress(name, cached.stat().st_size, cached.stat().st_size)
            return cached
        part = self.repo_dir / "partial" / f"{_safe(meta.etag)}.part"
        part.parent.mkdir(parents=True, exist_ok=True)
        done = part.stat().st_size if part.exists() else 0
        if size is not None and done > size:
            part.unlink()
            done = 0
        headers = _hf().utils.build_hf_headers(token=self.token)
        url = meta.location
        if urllib.parse.urlsplit(url)[:2] != urllib.parse.urlsplit(self.endpoint)[:2]:
            headers.pop("authorization", None)  # signed CDN URL: the token stays with the Hub
        bar = _progress_bar(self.progress, name)
        self.progress(name, done, size)
        with open(part, "ab") as f:
            try:
                _hf().file_download.http_get(url, f, resume_size=done, headers=headers, expected_size=size,
                                             displayed_filename=name, tqdm_class=bar)
            except Exception as e:
                self._raise_hub_error(e, name)
        if not _matches_etag(part, meta.etag):
            part.unlink(missing_ok=True)
            raise WeightsError(f"the download of {name} from hf:{self.source.repo} is corrupt (checksum mismatch)",
                               "run again to download it afresh")
        final.parent.mkdir(parents=True, exist_ok=True)
        os.replace(part, final)
        return final

    def _raise_hub_error(self, e: Exception, name: str) -> None:
        hf = _hf()
        errors = hf.errors
        repo, page = self.source.repo, f"{self.endpoint}/{self.source.repo}"
        status = getattr(getattr(e, "response", None), "status_code", None)
        if isinstance(e, WeightsError):
            raise e
        gated = WeightsError(
            f"hf:{repo} is gated and this token has no access (HTTP {status or 'denied'})",
            f"request access on {page} with your Hugging Face account, then pass a read token "
            "(Preferences → Hugging Face token, or HF_TOKEN)")
        if isinstance(e, errors.GatedRepoError):
            raise gated from None
        if isinstance(e, errors.RevisionNotFoundError):
            raise WeightsError(f"hf:{repo} has no revision {self.source.revision}",
                               "use a branch, tag or commit of the repository") from None
        if isinstance(e, errors.RepositoryNotFoundError):
            raise WeightsError(f"hf:{repo} was not found (or is gated and no valid token was sent)",
                               f"check the name; if it is gated, request access on {page} and pass a token") from None
        if isinstance(e, errors.EntryNotFoundError):
            raise WeightsError(f"hf:{repo}@{self.source.revision} has no {self._repo_path(name)}",
                               "the repository is not a SAM 3D Objects release; check the source") from None
        if status in (401, 403):
            raise gated from None
        if isinstance(e, errors.OfflineModeIsEnabled) or _is_transport_error(e):
            raise _Unreachable(f"{type(e).__name__}: {e}".splitlines()[0]) from None
        if isinstance(e, errors.HfHubHTTPError):
            raise WeightsError(f"hf:{repo}: HTTP {status} while fetching {name}",
                               "try again later, or choose a local weights folder") from None
        if isinstance(e, OSError):  # e.g. disk full, size mismatch after retries
            raise WeightsError(f"fetching {name} from hf:{repo} failed ({str(e).splitlines()[0]})",
                               "check the free disk space and run again to resume") from None
        raise e

    def single(self, name: str, offline: bool) -> Path:
        """One named file: fetched (or resumed) online, else the local copy of the last fetched commit."""
        if not offline:
            try:
                meta = self._metadata(name, self.source.revision)
                path = self._ensure(name, meta, meta.commit_hash)
                self._write_ref(meta.commit_hash)
                return path
            except _Unreachable:
                pass
        commit = self.source.revision if _COMMIT.fullmatch(self.source.revision) else self._read_ref(self.source.revision)
        path = self._local(name, commit) if commit else None
        if path is None:
            raise WeightsError(f"{name} of hf:{self.source.repo} is not downloaded and the Hub cannot be reached",
                               "go online once (allow online access), or give a local file")
        return path

    # -- offline --------------------------------------------------------------------------------------------------

    def offline(self) -> FetchedRelease:
        revision = self.source.revision
        commit = revision if _COMMIT.fullmatch(revision) else self._read_ref(revision)
        where = f"hf:{self.source.repo}@{revision}"
        hint = ("go online once to download them (unset HF_HUB_OFFLINE / allow online access), "
                "or choose a local weights folder")
        if commit is None:
            raise WeightsError(f"offline, and {where} was never downloaded here", hint)
        pipeline = self._local(PIPELINE_YAML, commit)
        if pipeline is None:
            raise WeightsError(f"offline, and {where} (commit {commit[:12]}) has no local {PIPELINE_YAML}", hint)
        files = {PIPELINE_YAML: pipeline}
        needed = self._needed(pipeline)
        missing = []
        for name in needed:
            path = self._local(name, commit)
            if path is None:
                missing.append(name)
            else:
                files[name] = path
                self.progress(name, path.stat().st_size, path.stat().st_size)
        if missing:
            raise WeightsError(f"offline, and {len(missing)} of {len(needed)} files of {where} are not downloaded: "
                               f"{', '.join(missing)}", hint)
        return self._result(commit, files)

    def _local(self, name: str, commit: str) -> Path | None:
        ours = self.repo_dir / "snapshots" / commit / name
        return ours if ours.is_file() else self._hf_cache(name, commit)

    # -- shared ---------------------------------------------------------------------------------------------------

    def _needed(self, pipeline_yaml: Path) -> list[str]:
        """The YAML and ckpt names pipeline.yaml gives for the requested models (the download allow-list)."""
        try:
            pipeline = yaml.safe_load(pipeline_yaml.read_text(encoding="utf-8"))
        except (yaml.YAMLError, UnicodeDecodeError, OSError) as e:
            raise WeightsError(f"{pipeline_yaml}: is not valid YAML ({type(e).__name__})",
                               "delete it and fetch again") from None
        if not isinstance(pipeline, dict):
            raise WeightsError(f"{pipeline_yaml}: is not a pipeline configuration", "delete it and fetch again")
        names: list[str] = []
        for stem in dict.fromkeys(MODEL_SPECS[m].file for m in self.models):
            for what in ("config", "ckpt"):
                names.append(referenced_name(pipeline, stem, what, str(pipeline_yaml)))
        return list(dict.fromkeys(names))

    def _hf_cache(self, name: str, commit: str) -> Path | None:
        found = _hf().try_to_load_from_cache(self.source.repo, self._repo_path(name), revision=commit,
                                             cache_dir=str(self.hf_cache_dir) if self.hf_cache_dir else None)
        return Path(found) if isinstance(found, str) and Path(found).is_file() else None

    def _repo_path(self, name: str) -> str:
        return f"{self.source.subfolder.strip('/')}/{name}" if self.source.subfolder.strip("/") else name

    def _read_ref(self, revision: str) -> str | None:
        for refs in (self.repo_dir / "refs", self._hf_refs_dir()):
            if refs is not None and (refs / _safe(revision)).is_file():
                value = (refs / _safe(revision)).read_text().strip()
                if _COMMIT.fullmatch(value):
                    return value
        return None

    def _hf_refs_dir(self) -> Path | None:
        cache = self.hf_cache_dir or Path(_hf().constants.HF_HUB_CACHE)
        return cache / f"models--{self.source.repo.replace('/', '--')}" / "refs"

    def _write_ref(self, commit: str) -> None:
        refs = self.repo_dir / "refs"
        refs.mkdir(parents=True, exist_ok=True)
        tmp = refs / f".{_safe(self.source.revision)}.{os.getpid()}.tmp"
        tmp.write_text(commit)
        os.replace(tmp, refs / _safe(self.source.revision))

    def _result(self, commit: str, files: dict[str, Path]) -> FetchedRelease:
        identities = {name: {"repo": self.source.repo, "commit": commit, "file": self._repo_path(name)}
                      for name in files}
        return FetchedRelease(source=self.source, commit=commit, files=files, identities=identities,
                              models=self.models)


class _Unreachable(Exception):
    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


def _hf() -> Any:
    """huggingface_hub, imported on first use, with its telemetry (and the registry lookup riding on it) off."""
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    import huggingface_hub
    import huggingface_hub.constants
    import huggingface_hub.errors
    import huggingface_hub.file_download
    import huggingface_hub.utils

    huggingface_hub.constants.HF_HUB_DISABLE_TELEMETRY = True
    return huggingface_hub


def _env_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().upper() in ("1", "ON", "YES", "TRUE")


def _is_transport_error(e: Exception) -> bool:
    """Connection refused, DNS failure, timeout, dropped connection (whichever HTTP library the hub uses)."""
    for module in ("httpx2", "httpx"):
        try:
            transport = __import__(module).TransportError
        except (ImportError, AttributeError):
            continue
        if isinstance(e, transport):
            return True
    return isinstance(e, (ConnectionError, TimeoutError))


def _progress_bar(progress: ProgressFn, name: str) -> type:
    """A tqdm stand-in for huggingface_hub's http_get that reports bytes to `progress` and prints nothing."""

    class Bar:
        def __init__(self, *_: Any, total: int | None = None, initial: int = 0, **__: Any):
            self.n, self.total = initial, total

        def update(self, n: int = 1) -> None:
            self.n += n
            progress(name, self.n, self.total)

        def close(self) -> None:
            pass

        def __enter__(self) -> Bar:
            return self

        def __exit__(self, *_: Any) -> bool:
            return False

    return Bar


def _matches_etag(path: Path, etag: str) -> bool:
    """sha256 (LFS files) or git blob sha1 (small files) of the file equals the etag; other etags: not checked."""
    etag = etag.strip('"').lower()
    if _SHA256.fullmatch(etag):
        digest = hashlib.sha256()
    elif _COMMIT.fullmatch(etag):
        digest = hashlib.sha1()
        digest.update(b"blob %d\0" % path.stat().st_size)
    else:
        return True
    with open(path, "rb") as f:
        while chunk := f.read(1 << 24):
            digest.update(chunk)
    return digest.hexdigest() == etag


def _safe(text: str) -> str:
    return urllib.parse.quote(text, safe="")
