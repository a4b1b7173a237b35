"""engine/weights/hub.py against a fake Hugging Face Hub on 127.0.0.1 (never the network).

The fake hub answers the two requests huggingface_hub makes for a file: `HEAD/GET /{repo}/resolve/{rev}/{path}`
(small files served directly with a git-sha1 ETag; `.ckpt` files as LFS: 302 to a separate "CDN" server with
X-Linked-Etag/X-Linked-Size) and `GET /blobs/{sha256}` on the CDN with HTTP Range support. It serves the files
of ../shared/parity/official_format_tiny under `checkpoints/`, can require a token (gated repo), can cut a
transfer part-way, and logs every request. Both servers listen on loopback only, on free ports, and stop when
the test ends (or after a minute at most).
"""
from __future__ import annotations

import hashlib
import http.server
import re
import shutil
import socket
import threading
import urllib.parse
from pathlib import Path

import pytest
import torch

from engine.errors import Cancelled, WeightsError
from engine.weights.hub import HubSource, fetch_release, open_weights, parse_source
from engine.weights.release import ALL_MODELS, DEFAULT_MODELS, open_release

REPO = "facebook/sam-3d-objects"
COMMIT = "2e73555018d2741ccd486e56c24fac41155a1dc6"
GOOD_TOKEN = "hf_good_token"
DEFAULT_FILES = {"pipeline.yaml", "ss_generator.yaml", "ss_generator.ckpt", "slat_generator.yaml",
                 "slat_generator.ckpt", "ss_decoder.yaml", "ss_decoder.ckpt", "slat_decoder_gs.yaml",
                 "slat_decoder_gs.ckpt", "slat_decoder_mesh.yaml", "slat_decoder_mesh.ckpt"}


class FakeHub:
    def __init__(self, folder: Path, *, token: str | None = None):
        self.files = {f"checkpoints/{p.name}": p.read_bytes() for p in folder.iterdir() if p.is_file()}
        self.token = token
        self.cut: dict[str, int] = {}  # repo path -> bytes sent before the connection drops (once)
        self.corrupt: set[str] = set()  # repo paths served with one byte changed
        self.log: list[dict] = []
        self._lock = threading.Lock()

    def __enter__(self) -> FakeHub:
        self.hub = self._serve(self._hub_reply)
        self.cdn = self._serve(self._cdn_reply)
        self.endpoint = f"http://127.0.0.1:{self.hub.server_address[1]}"
        self.cdn_url = f"http://127.0.0.1:{self.cdn.server_address[1]}"
        self._watchdog = threading.Timer(60, self.close)
        self._watchdog.daemon = True
        self._watchdog.start()
        return self

    def __exit__(self, *_) -> None:
        self.close()

    def close(self) -> None:
        self._watchdog.cancel()
        for server in (self.hub, self.cdn):
            if server.socket.fileno() != -1:
                server.shutdown()
                server.server_close()

    def requests(self, server: str, method: str | None = None) -> list[dict]:
        return [r for r in self.log if r["server"] == server and (method is None or r["method"] == method)]

    def _serve(self, reply) -> http.server.ThreadingHTTPServer:
        hub = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            timeout = 10

            def do_HEAD(self):
                reply(self, head=True)

            def do_GET(self):
                reply(self, head=False)

            def log_message(self, *_):
                pass

        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        server.daemon_threads = True
        threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        return server

    def _record(self, server: str, request, **extra) -> None:
        with self._lock:
            self.log.append({"server": server, "method": request.command, "path": urllib.parse.unquote(request.path),
                             "range": request.headers.get("Range"), "auth": request.headers.get("Authorization"),
                             **extra})

    def _hub_reply(self, request, head: bool) -> None:
        self._record("hub", request)
        match = re.fullmatch(r"/([^/]+/[^/]+)/resolve/([^/]+)/(.+)", urllib.parse.urlsplit(request.path).path)
        if not match:
            return _send(request, 404, {"X-Error-Code": "RepoNotFound"}, b"", head)
        repo, revision, path = (urllib.parse.unquote(g) for g in match.groups())
        auth = request.headers.get("Authorization")
        if self.token is not None and auth != f"Bearer {self.token}":
            status = 401 if auth is None else 403
            return _send(request, status, {"X-Error-Code": "GatedRepo",
                                           "X-Error-Message": "Access to this model is restricted."}, b"", head)
        if repo != REPO:
            return _send(request, 401, {"X-Error-Code": "RepoNotFound"}, b"", head)
        if revision not in ("main", COMMIT):
            return _send(request, 404, {"X-Error-Code": "RevisionNotFound"}, b"", head)
        if path not in self.files:
            return _send(request, 404, {"X-Error-Code": "EntryNotFound", "X-Repo-Commit": COMMIT}, b"", head)
        data = self.files[path]
        if path.endswith(".ckpt"):
            sha = hashlib.sha256(data).hexdigest()
            return _send(request, 302, {"Location": f"{self.cdn_url}/blobs/{sha}?file={urllib.parse.quote(path)}",
                                        "X-Repo-Commit": COMMIT, "X-Linked-Etag": f'"{sha}"',
                                        "X-Linked-Size": str(len(data)), "ETag": '"pointer"'}, b"", head)
        git_sha = hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()
        _send(request, 200, {"X-Repo-Commit": COMMIT, "ETag": f'"{git_sha}"'}, data, head)

    def _cdn_reply(self, request, head: bool) -> None:
        self._record("cdn", request)
        query = urllib.parse.parse_qs(urllib.parse.urlsplit(request.path).query)
        path = query.get("file", [""])[0]
        if path not in self.files:
            return _send(request, 404, {}, b"", head)
        data = self.files[path]
        if path in self.corrupt:
            data = data[:-1] + bytes([data[-1] ^ 1])
        start = 0
        if request.headers.get("Range"):
            start = int(re.fullmatch(r"bytes=(\d+)-", request.headers["Range"]).group(1))
        headers = {"Content-Range": f"bytes {start}-{len(data) - 1}/{len(data)}"} if start else {}
        if not head and path in self.cut:
            keep = self.cut.pop(path)
            request.send_response(200)
            request.send_header("Content-Length", str(len(data)))
            request.end_headers()
            request.wfile.write(data[:keep])
            request.wfile.flush()
            request.close_connection = True
            return
        _send(request, 206 if start else 200, headers, data[start:], head)


def _send(request, status: int, headers: dict, body: bytes, head: bool) -> None:
    request.send_response(status)
    for key, value in headers.items():
        request.send_header(key, value)
    request.send_header("Content-Length", str(len(body)))
    request.send_header("Connection", "close")  # no idle keep-alive connections outlive a stopped server
    request.close_connection = True
    request.end_headers()
    if not head:
        request.wfile.write(body)


@pytest.fixture(autouse=True)
def loopback_only(monkeypatch):
    """Every connection a test opens must go to 127.0.0.1; anything else is recorded and refused."""
    attempts = []
    real = socket.getaddrinfo

    def guarded(host, *args, **kwargs):
        if host not in ("127.0.0.1", "localhost", "::1"):
            attempts.append(host)
            raise OSError(f"test tried to reach {host}")
        return real(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", guarded)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    yield
    assert attempts == [], f"network access attempted: {attempts}"


@pytest.fixture
def tiny(parity_dir: Path) -> Path:
    return parity_dir / "official_format_tiny"


@pytest.fixture
def small_chunks(monkeypatch):
    """huggingface_hub writes in 10 MB chunks; 64 KiB lets a 2 MB file arrive in pieces."""
    import huggingface_hub.constants
    monkeypatch.setattr(huggingface_hub.constants, "DOWNLOAD_CHUNK_SIZE", 64 * 1024)


def _fetch(hub: FakeHub, tmp_path: Path, **kwargs):
    args = dict(endpoint=hub.endpoint, download_dir=tmp_path / "downloads", hf_cache_dir=tmp_path / "hf", token=False)
    args.update(kwargs)
    return fetch_release(args.pop("source", f"hf:{REPO}"), **args)


def test_release_from_the_hub_opens_through_the_same_path_as_a_folder(tiny: Path, tmp_path: Path):
    progress = []
    with FakeHub(tiny, token=GOOD_TOKEN) as hub:
        fetched = _fetch(hub, tmp_path, token=GOOD_TOKEN, progress=lambda *a: progress.append(a))
    assert fetched.commit == COMMIT and set(fetched.files) == DEFAULT_FILES
    for name, path in fetched.files.items():
        assert path.read_bytes() == (tiny / name).read_bytes(), name
        assert path.is_relative_to(tmp_path / "downloads")
    # only the allow-list was requested (no io.*, README, ss_encoder, unused gs_4 decoder)
    requested = {r["path"].split(f"/resolve/")[1].split("/", 1)[1] for r in hub.requests("hub")}
    assert requested == {f"checkpoints/{n}" for n in DEFAULT_FILES}
    # every file after the first is pinned to the resolved commit
    assert all(f"/resolve/{COMMIT}/" in r["path"] for r in hub.requests("hub") if "pipeline.yaml" not in r["path"])
    # the token goes to the Hub, never to the CDN
    assert all(r["auth"] == f"Bearer {GOOD_TOKEN}" for r in hub.requests("hub"))
    assert hub.requests("cdn") and all(r["auth"] is None for r in hub.requests("cdn"))
    # progress: bytes per file, ending at the file size
    for name in DEFAULT_FILES:
        reports = [(done, total) for n, done, total in progress if n == name]
        size = (tiny / name).stat().st_size
        assert reports[-1] == (size, size), name
        assert [d for d, _ in reports] == sorted(d for d, _ in reports), name

    release = fetched.open()
    local = open_release(tiny)
    assert release.settings == local.settings and release.section("ss_flow") == local.section("ss_flow")
    for name, w in release.load().items():
        ref = local.load([name])[name]
        assert w.tensors.keys() == ref.tensors.keys()
        assert all(torch.equal(w.tensors[k], ref.tensors[k]) for k in w.tensors)
    assert release.identity("ss_flow") == {"model": "ss_flow", "prefix": "_base_models.generator.reverse_fn.backbone.",
                                           "repo": REPO, "commit": COMMIT, "file": "checkpoints/ss_generator.ckpt"}


def test_second_fetch_downloads_nothing(tiny: Path, tmp_path: Path):
    with FakeHub(tiny) as hub:
        _fetch(hub, tmp_path, models=ALL_MODELS)
        downloads = len(hub.requests("cdn", "GET"))
        again = _fetch(hub, tmp_path, models=ALL_MODELS)
        assert len(hub.requests("cdn", "GET")) == downloads
    assert "slat_decoder_gs_4.ckpt" in again.files


def test_cancelled_download_resumes_where_it_stopped(tiny: Path, tmp_path: Path, small_chunks):
    name = "ss_generator.ckpt"
    size = (tiny / name).stat().st_size

    def cancel_midway(file, done, total):
        if file == name and done >= size // 2:
            raise Cancelled("stopped by the user")

    with FakeHub(tiny) as hub:
        with pytest.raises(Cancelled):
            _fetch(hub, tmp_path, progress=cancel_midway)
        assert not (tmp_path / "downloads" / "facebook--sam-3d-objects" / "snapshots" / COMMIT / name).exists()
        progress = []
        fetched = _fetch(hub, tmp_path, progress=lambda *a: progress.append(a))
    gets = [r for r in hub.requests("cdn", "GET") if name in r["path"]]
    assert gets[0]["range"] is None and gets[1]["range"] is not None
    resumed_at = int(re.fullmatch(r"bytes=(\d+)-", gets[1]["range"]).group(1))
    assert 0 < resumed_at < size
    assert [d for n, d, _ in progress if n == name][0] == resumed_at
    assert fetched.files[name].read_bytes() == (tiny / name).read_bytes()


def test_dropped_connection_is_resumed_within_the_same_fetch(tiny: Path, tmp_path: Path, small_chunks):
    name = "slat_generator.ckpt"
    with FakeHub(tiny) as hub:
        hub.cut[f"checkpoints/{name}"] = 700_000
        fetched = _fetch(hub, tmp_path)
    gets = [r for r in hub.requests("cdn", "GET") if name in r["path"]]
    assert len(gets) == 2 and gets[1]["range"] is not None
    assert fetched.files[name].read_bytes() == (tiny / name).read_bytes()


def test_corrupt_download_is_caught_by_its_checksum(tiny: Path, tmp_path: Path):
    with FakeHub(tiny) as hub:
        hub.corrupt.add("checkpoints/ss_decoder.ckpt")
        with pytest.raises(WeightsError) as e:
            _fetch(hub, tmp_path)
    assert "ss_decoder.ckpt" in e.value.message and "checksum" in e.value.message
    assert not list((tmp_path / "downloads").rglob("ss_decoder.ckpt"))


@pytest.mark.parametrize("token, status", [(False, 401), ("hf_wrong", 403)])
def test_gated_repo_without_access_says_to_request_it_and_pass_a_token(tiny: Path, tmp_path: Path, token, status):
    with FakeHub(tiny, token=GOOD_TOKEN) as hub:
        with pytest.raises(WeightsError) as e:
            _fetch(hub, tmp_path, token=token)
    text = str(e.value)
    assert "\n" not in text and f"HTTP {status}" in text and "gated" in text
    assert f"request access on {hub.endpoint}/{REPO}" in text and "token" in e.value.hint
    assert not (tmp_path / "downloads").exists() or not list((tmp_path / "downloads").rglob("*.ckpt"))


def test_unknown_repo_revision_and_file_are_named(tiny: Path, tmp_path: Path):
    with FakeHub(tiny) as hub:
        with pytest.raises(WeightsError, match="hf:someone/else was not found"):
            _fetch(hub, tmp_path, source="hf:someone/else")
        with pytest.raises(WeightsError, match="has no revision v9"):
            _fetch(hub, tmp_path, source=f"hf:{REPO}@v9")
        del hub.files["checkpoints/slat_decoder_gs.yaml"]
        with pytest.raises(WeightsError, match="has no checkpoints/slat_decoder_gs.yaml"):
            _fetch(hub, tmp_path)


def test_offline_uses_only_local_copies_and_names_what_is_missing(tiny: Path, tmp_path: Path, monkeypatch):
    with FakeHub(tiny) as hub:
        _fetch(hub, tmp_path)
        endpoint = hub.endpoint
    # the servers are gone: offline by argument, then by HF_HUB_OFFLINE
    fetched = _fetch_offline = fetch_release(f"hf:{REPO}", endpoint=endpoint, download_dir=tmp_path / "downloads",
                                             hf_cache_dir=tmp_path / "hf", offline=True)
    assert fetched.commit == COMMIT and set(fetched.files) == DEFAULT_FILES
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert fetch_release(f"hf:{REPO}", endpoint=endpoint, download_dir=tmp_path / "downloads",
                         hf_cache_dir=tmp_path / "hf").files == _fetch_offline.files
    (tmp_path / "downloads" / "facebook--sam-3d-objects" / "snapshots" / COMMIT / "ss_decoder.ckpt").unlink()
    with pytest.raises(WeightsError) as e:
        fetch_release(f"hf:{REPO}", download_dir=tmp_path / "downloads", hf_cache_dir=tmp_path / "hf")
    assert "offline" in e.value.message and "1 of 10 files" in e.value.message and "ss_decoder.ckpt" in e.value.message
    with pytest.raises(WeightsError, match="never downloaded"):
        fetch_release(f"hf:{REPO}@other", download_dir=tmp_path / "downloads", hf_cache_dir=tmp_path / "hf")
    with pytest.raises(WeightsError, match="never downloaded"):
        fetch_release(f"hf:{REPO}", download_dir=tmp_path / "empty", hf_cache_dir=tmp_path / "hf")


def test_files_in_the_standard_hf_cache_are_used_in_place(tiny: Path, tmp_path: Path):
    repo_cache = tmp_path / "hf" / "models--facebook--sam-3d-objects"
    snapshot = repo_cache / "snapshots" / COMMIT / "checkpoints"
    snapshot.mkdir(parents=True)
    for name in DEFAULT_FILES:
        shutil.copyfile(tiny / name, snapshot / name)
    (repo_cache / "refs").mkdir()
    (repo_cache / "refs" / "main").write_text(COMMIT)
    fetched = fetch_release(f"hf:{REPO}", download_dir=tmp_path / "downloads", hf_cache_dir=tmp_path / "hf",
                            offline=True)
    assert all(p.parent == snapshot for p in fetched.files.values())
    with FakeHub(tiny) as hub:  # online: metadata only, no data transfer
        online = _fetch(hub, tmp_path)
        assert hub.requests("cdn") == [] and all(r["method"] == "HEAD" for r in hub.requests("hub"))
    assert online.files == fetched.files


def test_unreachable_hub_falls_back_to_local_copies_or_says_both(tiny: Path, tmp_path: Path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}"  # nothing listens here once closed
    with pytest.raises(WeightsError) as e:
        fetch_release(f"hf:{REPO}", endpoint=dead, download_dir=tmp_path / "downloads", hf_cache_dir=tmp_path / "hf")
    assert f"cannot reach {dead}" in e.value.message and "never downloaded" in e.value.message
    with FakeHub(tiny) as hub:
        _fetch(hub, tmp_path)
    fetched = fetch_release(f"hf:{REPO}", endpoint=dead, download_dir=tmp_path / "downloads",
                            hf_cache_dir=tmp_path / "hf")
    assert set(fetched.files) == DEFAULT_FILES


def test_sources_parse_as_folders_or_hub_repositories(tiny: Path, tmp_path: Path):
    assert parse_source("hf:") == HubSource()
    assert parse_source("hf:facebook/sam-3d-objects") == HubSource(REPO, "main")
    assert parse_source("hf:me/my-copy@v1.0") == HubSource("me/my-copy", "v1.0")
    assert parse_source(str(tiny)) == tiny and parse_source(tiny) == tiny
    with pytest.raises(WeightsError, match="hf:OWNER/NAME"):
        parse_source("hf:not a repo")
    assert open_weights(tiny).settings.image_size == 56
    with FakeHub(tiny) as hub:
        release = open_weights(f"hf:{REPO}", endpoint=hub.endpoint, download_dir=tmp_path / "d",
                               hf_cache_dir=tmp_path / "hf", token=False)
    assert release.models == DEFAULT_MODELS and release.where.startswith(f"hf:{REPO}@")


def test_pipeline_source_spec_from_the_hub(tiny: Path, tmp_path: Path):
    from engine import config as pipeline_configs
    from engine.weights.release_source import open_release as open_pipeline_source

    with FakeHub(tiny) as hub:  # not_in_yaml.json is not on the allow-list: given explicitly
        config, provide, identity = open_pipeline_source(
            f"hf:{REPO}", endpoint=hub.endpoint, download_dir=tmp_path / "d", hf_cache_dir=tmp_path / "hf",
            token=False, cache_dir=tmp_path / "c", not_in_yaml=tiny / "not_in_yaml.json")
    assert identity == f"hf:{REPO}@{COMMIT}" and config == pipeline_configs.preset("tiny")
    assert provide("ss_decoder").keys() == open_release(tiny).load(["ss_decoder"])["ss_decoder"].tensors.keys()


def test_pinned_commit_already_downloaded_needs_no_request(tiny: Path, tmp_path: Path):
    with FakeHub(tiny) as hub:
        _fetch(hub, tmp_path)
        before = len(hub.log)
        fetched = _fetch(hub, tmp_path, source=f"hf:{REPO}@{COMMIT}")
        assert len(hub.log) == before and fetched.commit == COMMIT


def test_hub_lost_mid_fetch_is_one_clear_error(tiny: Path, tmp_path: Path):
    with FakeHub(tiny) as hub:
        def stop_after_first_file(name, done, total):
            if name == "pipeline.yaml" and done == total:
                hub.close()

        with pytest.raises(WeightsError) as e:
            _fetch(hub, tmp_path, progress=stop_after_first_file)
    assert f"lost the connection to {hub.endpoint}" in e.value.message and "resume" in e.value.hint


def test_a_single_file_downloads_resumes_and_then_works_offline(tiny: Path, tmp_path: Path):
    from engine.weights.hub import download_file

    name = "checkpoints/slat_decoder_gs.ckpt"  # served as an LFS file through the CDN, like MoGe's model.pt
    with FakeHub(tiny) as hub:
        path = download_file(REPO, name, endpoint=hub.endpoint, download_dir=tmp_path / "downloads")
        assert path.read_bytes() == (tiny / "slat_decoder_gs.ckpt").read_bytes()
        assert len(hub.requests("cdn", "GET")) == 1
    again = download_file(REPO, name, endpoint="http://127.0.0.1:9", download_dir=tmp_path / "downloads", offline=True)
    assert again == path
    with pytest.raises(WeightsError, match="not downloaded"):
        download_file(REPO, "checkpoints/missing.ckpt", download_dir=tmp_path / "downloads", offline=True)
