"""Media repository interop: matrix-nio clients against each homeserver (Synapse as the
reference, then ieum), and media across federation between ieum and a real Synapse, in
both directions.

Owns the scenarios: a nio client uploads a PNG (made with Pillow) and another nio client
on the same server downloads it and a cropped thumbnail; a Synapse user downloads media
uploaded to ieum (and a thumbnail of it) through Synapse; an ieum user downloads
media uploaded to Synapse (and a thumbnail of it) through ieum. Bytes are compared
exactly; thumbnails are opened with Pillow and their sizes checked.
"""

from __future__ import annotations

import io
import json
import secrets
import urllib.error
import urllib.parse
import urllib.request

import nio
import pytest
from PIL import Image

from fedkit import Client, FederationPair, register_ieum, register_synapse, start_federation_pair, unique
from nioclient import RecordingClient, expect


def png_bytes(width: int, height: int) -> bytes:
    image = Image.linear_gradient("L").resize((width, height)).convert("RGB")
    out = io.BytesIO()
    image.save(out, "PNG")
    return out.getvalue()


def size_of(data: bytes) -> tuple[int, int]:
    return Image.open(io.BytesIO(data)).size


def raw(client: Client, method: str, path: str, data: bytes | None = None,
        headers: dict | None = None, query: dict | None = None) -> tuple[int, dict, bytes]:
    url = f"{client.server.base_url}{path}"
    if query:
        url += "?" + urllib.parse.urlencode(query)
    request = urllib.request.Request(url, data=data, method=method,
                                     headers={"Authorization": f"Bearer {client.token}", **(headers or {})})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, {k.lower(): v for k, v in response.headers.items()}, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, {k.lower(): v for k, v in exc.headers.items()}, exc.read()


def upload(client: Client, data: bytes, content_type: str, filename: str) -> str:
    status, _, body = raw(client, "POST", "/_matrix/media/v3/upload", data,
                          {"Content-Type": content_type}, {"filename": filename})
    assert status == 200, f"{client} upload: HTTP {status} {body[:500]!r}"
    return json.loads(body)["content_uri"]


def media_path(kind: str, mxc: str) -> str:
    server, media_id = mxc.removeprefix("mxc://").split("/", 1)
    return f"/_matrix/client/v1/media/{kind}/{server}/{media_id}"


# -- one server, two nio clients -------------------------------------------------


def register_on(server, localpart: str) -> Client:
    """A fresh account on either homeserver (Synapse: its shared-secret admin API)."""
    if server.name == "synapse":
        return register_synapse(server, localpart)
    return register_ieum(server, localpart)


@pytest.mark.asyncio
async def test_nio_clients_share_an_image_and_its_thumbnail(homeserver):
    alice_info = register_on(homeserver, unique("alice"))
    bob_info = register_on(homeserver, unique("bob"))
    alice = RecordingClient(homeserver.base_url, user=alice_info.user_id)
    alice.access_token, alice.user_id = alice_info.token, alice_info.user_id
    bob = RecordingClient(homeserver.base_url, user=bob_info.user_id)
    bob.access_token, bob.user_id = bob_info.token, bob_info.user_id
    try:
        data = png_bytes(640, 320)
        uploaded, _ = await alice.upload(io.BytesIO(data), content_type="image/png",
                                         filename="지도.png", filesize=len(data))
        uploaded = expect(uploaded, nio.UploadResponse, "alice uploads a PNG")
        assert uploaded.content_uri.startswith(f"mxc://{homeserver.server_name}/")

        downloaded = expect(await bob.download(mxc=uploaded.content_uri), nio.DownloadResponse,
                            "bob downloads it")
        assert downloaded.body == data
        assert downloaded.content_type == "image/png"
        assert downloaded.filename == "지도.png"

        server, media_id = uploaded.content_uri.removeprefix("mxc://").split("/", 1)
        thumb = expect(await bob.thumbnail(server, media_id, 96, 96, method=nio.ResizingMethod.crop),
                       nio.ThumbnailResponse, "bob asks for a 96x96 crop")
        assert size_of(thumb.body) == (96, 96)
        scaled = expect(await bob.thumbnail(server, media_id, 320, 240), nio.ThumbnailResponse,
                        "bob asks for a 320x240 scale")
        assert size_of(scaled.body) == (320, 160)
    finally:
        await alice.close()
        await bob.close()


# -- across federation with Synapse ------------------------------------------------


@pytest.fixture(scope="module")
def federation_pair(request, tmp_path_factory) -> FederationPair:
    return start_federation_pair(request, tmp_path_factory, "media")


def test_synapse_user_downloads_media_uploaded_to_ieum(federation_pair):
    i_alice = register_ieum(federation_pair.ieum, unique("alice"))
    s_bob = register_synapse(federation_pair.synapse, unique("bob"))
    data = png_bytes(640, 320)
    mxc = upload(i_alice, data, "image/png", f"from-ieum-{secrets.token_hex(3)}.png")

    status, headers, body = raw(s_bob, "GET", media_path("download", mxc))
    assert status == 200, f"Synapse download of {mxc}: HTTP {status} {body[:500]!r}"
    assert body == data
    assert headers.get("content-type", "").startswith("image/png")

    status, _, body = raw(s_bob, "GET", media_path("thumbnail", mxc),
                          query={"width": 96, "height": 96, "method": "crop"})
    assert status == 200, f"Synapse thumbnail of {mxc}: HTTP {status} {body[:500]!r}"
    width, height = size_of(body)
    assert (width, height) == (96, 96), (width, height)


def test_ieum_user_downloads_media_uploaded_to_synapse(federation_pair):
    s_alice = register_synapse(federation_pair.synapse, unique("alice"))
    i_bob = register_ieum(federation_pair.ieum, unique("bob"))
    data = png_bytes(800, 400)
    mxc = upload(s_alice, data, "image/png", "from-synapse.png")
    assert mxc.startswith(f"mxc://{federation_pair.synapse.server_name}/")

    status, headers, body = raw(i_bob, "GET", media_path("download", mxc))
    assert status == 200, f"ieum download of {mxc}: HTTP {status} {body[:500]!r}"
    assert body == data
    assert headers.get("content-type", "").startswith("image/png")
    assert headers.get("x-content-type-options") == "nosniff"

    status, headers, body = raw(i_bob, "GET", media_path("thumbnail", mxc),
                                query={"width": 320, "height": 240, "method": "scale"})
    assert status == 200, f"ieum thumbnail of {mxc}: HTTP {status} {body[:500]!r}"
    assert size_of(body) == (320, 160)

    # Served from ieum's cache the second time: same bytes even with Synapse stopped.
    federation_pair.synapse.stop()
    try:
        status, _, again = raw(i_bob, "GET", media_path("download", mxc))
        assert status == 200 and again == data, f"cached download: HTTP {status}"
    finally:
        federation_pair.synapse.start()
