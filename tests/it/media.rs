//! The media repository: uploads (direct and async), downloads with their security
//! headers, thumbnails (sizes, reuse, hostile images), legacy endpoints per configuration,
//! durability across a restart, and remote media fetched over federation and cached.

use std::{io::Cursor, time::Duration};

use image::{DynamicImage, ImageFormat, ImageReader};
use ruma::{
    OwnedMxcUri, UInt,
    api::client::{authenticated_media as auth, media},
    uint,
};

use crate::{
    federation::Cluster,
    harness::{Client, TestServer},
};

/// A PNG (or JPEG) of `width` x `height` with a gradient, made here rather than shipped.
fn image_bytes(width: u32, height: u32, format: ImageFormat) -> Vec<u8> {
    let image = image::RgbImage::from_fn(width, height, |x, y| image::Rgb([(x % 256) as u8, (y % 256) as u8, 128]));
    let mut out = Cursor::new(Vec::new());
    DynamicImage::ImageRgb8(image).write_to(&mut out, format).unwrap();
    out.into_inner()
}

fn dimensions(bytes: &[u8]) -> (u32, u32) {
    ImageReader::new(Cursor::new(bytes)).with_guessed_format().unwrap().into_dimensions().unwrap()
}

fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = 0xFFFF_FFFFu32;
    for &byte in bytes {
        crc ^= u32::from(byte);
        for _ in 0..8 {
            crc = if crc & 1 != 0 { (crc >> 1) ^ 0xEDB8_8320 } else { crc >> 1 };
        }
    }
    !crc
}

/// A small valid PNG whose header claims `width` x `height` (a decompression bomb's header).
fn png_claiming(width: u32, height: u32) -> Vec<u8> {
    let mut png = image_bytes(8, 8, ImageFormat::Png);
    // Signature (8) + IHDR length (4) + "IHDR" (4): width and height follow.
    png[16..20].copy_from_slice(&width.to_be_bytes());
    png[20..24].copy_from_slice(&height.to_be_bytes());
    let crc = crc32(&png[12..29]);
    png[29..33].copy_from_slice(&crc.to_be_bytes());
    png
}

async fn upload(client: &Client, bytes: &[u8], filename: Option<&str>, content_type: &str) -> OwnedMxcUri {
    let mut request = media::create_content::v3::Request::new(bytes.to_vec());
    request.filename = filename.map(str::to_owned);
    request.content_type = Some(content_type.to_owned());
    client.send(request).await.content_uri
}

/// A raw response: status, headers, body.
struct Raw {
    status: u16,
    headers: reqwest::header::HeaderMap,
    body: Vec<u8>,
}

impl Raw {
    fn header(&self, name: &str) -> &str {
        self.headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or("")
    }
    fn errcode(&self) -> String {
        serde_json::from_slice::<serde_json::Value>(&self.body)
            .ok()
            .and_then(|v| v["errcode"].as_str().map(str::to_owned))
            .unwrap_or_default()
    }
}

async fn get(client: &Client, path: &str, authenticated: bool) -> Raw {
    let mut request = reqwest::Client::new().get(format!("{}{path}", client.base));
    if authenticated && let Some(token) = &client.token {
        request = request.bearer_auth(token);
    }
    let response = request.send().await.expect("the server answers");
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let body = response.bytes().await.unwrap().to_vec();
    Raw { status, headers, body }
}

fn parts(uri: &OwnedMxcUri) -> (String, String) {
    let (server, id) = uri.parts().unwrap();
    (server.to_string(), id.to_owned())
}

async fn download(client: &Client, uri: &OwnedMxcUri) -> Raw {
    let (server, id) = parts(uri);
    get(client, &format!("/_matrix/client/v1/media/download/{server}/{id}"), true).await
}

async fn thumbnail(client: &Client, uri: &OwnedMxcUri, width: u32, height: u32, method: &str) -> Raw {
    let (server, id) = parts(uri);
    get(
        client,
        &format!("/_matrix/client/v1/media/thumbnail/{server}/{id}?width={width}&height={height}&method={method}"),
        true,
    )
    .await
}

#[tokio::test]
async fn upload_and_download_round_trip_with_safe_headers() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let bytes = "회의록: 예산 검토\n".as_bytes();
    let uri = upload(&alice, bytes, Some("회의록 2026.txt"), "text/plain; charset=utf-8").await;
    assert_eq!(uri.server_name().unwrap().as_str(), server.server_name());
    assert!(uri.media_id().unwrap().len() >= 32, "media ids are long and random: {uri}");

    // Any local user may download it, with the exact bytes and type.
    let got = download(&bob, &uri).await;
    assert_eq!(got.status, 200);
    assert_eq!(got.body, bytes);
    assert_eq!(got.header("content-type"), "text/plain; charset=utf-8");
    assert_eq!(got.header("content-disposition"), "inline; filename*=utf-8''%ED%9A%8C%EC%9D%98%EB%A1%9D%202026.txt");
    assert!(got.header("content-security-policy").starts_with("sandbox; default-src 'none'; script-src 'none'"));
    assert_eq!(got.header("x-content-type-options"), "nosniff");
    assert_eq!(got.header("cross-origin-resource-policy"), "cross-origin");

    // The ruma client type parses the same answer.
    let (server_name, media_id) = uri.parts().unwrap();
    let response = bob.send(auth::get_content::v1::Request::new(media_id.to_owned(), server_name.to_owned())).await;
    assert_eq!(response.file, bytes);

    // A filename in the path names the download.
    let (s, id) = parts(&uri);
    let named = get(&bob, &format!("/_matrix/client/v1/media/download/{s}/{id}/minutes.txt"), true).await;
    assert_eq!(named.status, 200);
    assert_eq!(named.body, bytes);
    assert_eq!(named.header("content-disposition"), "inline; filename=minutes.txt");

    // Active content is never inline.
    let html = upload(&alice, b"<script>alert(1)</script>", Some("x.html"), "text/html").await;
    let got = download(&bob, &html).await;
    assert_eq!(got.header("content-disposition"), "attachment; filename=x.html");
    let svg = upload(&alice, b"<svg xmlns='http://www.w3.org/2000/svg'/>", None, "image/svg+xml").await;
    assert_eq!(download(&bob, &svg).await.header("content-disposition"), "attachment");
    // No content type: served as opaque bytes.
    let mut request = media::create_content::v3::Request::new(b"\x00\x01".to_vec());
    request.content_type = None;
    let untyped = alice.send(request).await.content_uri;
    assert_eq!(download(&bob, &untyped).await.header("content-type"), "application/octet-stream");
}

#[tokio::test]
async fn the_upload_limit_is_configured_advertised_and_enforced() {
    let server = TestServer::start_with(&[("IEUM_MEDIA__MAX_UPLOAD_SIZE", "100000")]).await;
    let alice = server.register("alice").await;
    let config = alice.send(auth::get_media_config::v1::Request::new()).await;
    assert_eq!(config.upload_size, uint!(100000));
    // Larger than http.max_request_bytes would allow elsewhere is fine up to the media limit.
    upload(&alice, &vec![7u8; 100_000], None, "application/octet-stream").await;
    let error = alice.try_send(media::create_content::v3::Request::new(vec![7u8; 100_001])).await.unwrap_err();
    assert_eq!((error.status, error.errcode()), (413, "M_TOO_LARGE"));
    // Without a token the body is not even read: 401, not 413.
    let anonymous = reqwest::Client::new()
        .post(format!("{}/_matrix/media/v3/upload", alice.base))
        .body(vec![7u8; 200_000])
        .send()
        .await
        .unwrap();
    assert_eq!(anonymous.status().as_u16(), 401);

    // The default is 50 MiB, above the 1 MiB JSON body limit.
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    assert_eq!(alice.send(auth::get_media_config::v1::Request::new()).await.upload_size, uint!(52428800));
    let big = vec![1u8; 3 * 1024 * 1024];
    let uri = upload(&alice, &big, None, "application/octet-stream").await;
    assert_eq!(download(&alice, &uri).await.body, big);
}

#[tokio::test]
async fn async_uploads_are_filled_once_by_their_creator() {
    let server = TestServer::start_with(&[("IEUM_MEDIA__MAX_PENDING_UPLOADS", "2")]).await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let created = alice.send(media::create_mxc_uri::v1::Request::default()).await;
    let expires = created.unused_expires_at.expect("unused_expires_at").get();
    assert!(u64::from(expires) > ruma::MilliSecondsSinceUnixEpoch::now().get().into());
    let uri = created.content_uri;

    // Downloading before the upload waits for timeout_ms, then M_NOT_YET_UPLOADED.
    let (s, id) = parts(&uri);
    let started = std::time::Instant::now();
    let pending = get(&alice, &format!("/_matrix/client/v1/media/download/{s}/{id}?timeout_ms=300"), true).await;
    assert_eq!((pending.status, pending.errcode().as_str()), (504, "M_NOT_YET_UPLOADED"));
    assert!(started.elapsed() >= Duration::from_millis(250), "{:?}", started.elapsed());

    // Only the creator may fill it.
    let put = media::create_content_async::v3::Request::from_url(&uri, b"by bob".to_vec()).unwrap();
    let error = bob.try_send(put).await.unwrap_err();
    assert_eq!((error.status, error.errcode()), (403, "M_FORBIDDEN"));

    // A waiting download is answered as soon as the upload lands.
    let waiter = {
        let alice = alice.clone();
        let path = format!("/_matrix/client/v1/media/download/{s}/{id}?timeout_ms=20000");
        tokio::spawn(async move { get(&alice, &path, true).await })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut put = media::create_content_async::v3::Request::from_url(&uri, b"the real content".to_vec()).unwrap();
    put.content_type = Some("text/plain".into());
    put.filename = Some("real.txt".into());
    alice.send(put).await;
    let waited = tokio::time::timeout(Duration::from_secs(5), waiter).await.expect("woken").unwrap();
    assert_eq!(waited.status, 200);
    assert_eq!(waited.body, b"the real content");
    assert_eq!(waited.header("content-disposition"), "inline; filename=real.txt");

    // A second upload to the same id is refused.
    let again = media::create_content_async::v3::Request::from_url(&uri, b"overwrite".to_vec()).unwrap();
    let error = alice.try_send(again).await.unwrap_err();
    assert_eq!((error.status, error.errcode()), (409, "M_CANNOT_OVERWRITE_MEDIA"));
    assert_eq!(download(&bob, &uri).await.body, b"the real content");

    // Unknown ids (and other servers' ids) are not found.
    let unknown: OwnedMxcUri = format!("mxc://{}/notreserved", server.server_name()).into();
    let put = media::create_content_async::v3::Request::from_url(&unknown, b"x".to_vec()).unwrap();
    assert_eq!(alice.try_send(put).await.unwrap_err().errcode(), "M_NOT_FOUND");
    let foreign: OwnedMxcUri = "mxc://elsewhere.test/abc".into();
    let put = media::create_content_async::v3::Request::from_url(&foreign, b"x".to_vec()).unwrap();
    assert_eq!(alice.try_send(put).await.unwrap_err().errcode(), "M_NOT_FOUND");

    // At most max_pending_uploads unfilled ids per user.
    alice.send(media::create_mxc_uri::v1::Request::default()).await;
    alice.send(media::create_mxc_uri::v1::Request::default()).await;
    let error = alice.try_send(media::create_mxc_uri::v1::Request::default()).await.unwrap_err();
    assert_eq!((error.status, error.errcode()), (429, "M_LIMIT_EXCEEDED"));
    bob.send(media::create_mxc_uri::v1::Request::default()).await;
}

#[tokio::test]
async fn unknown_media_is_not_found_and_tokens_are_required() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let name = server.server_name().to_owned();
    let missing = get(&alice, &format!("/_matrix/client/v1/media/download/{name}/doesnotexist"), true).await;
    assert_eq!((missing.status, missing.errcode().as_str()), (404, "M_NOT_FOUND"));
    let odd = get(&alice, &format!("/_matrix/client/v1/media/download/{name}/..%2F..%2Fetc"), true).await;
    assert_eq!((odd.status, odd.errcode().as_str()), (404, "M_NOT_FOUND"));
    let uri = upload(&alice, b"secret", None, "text/plain").await;
    let (s, id) = parts(&uri);
    for path in [
        format!("/_matrix/client/v1/media/download/{s}/{id}"),
        format!("/_matrix/client/v1/media/thumbnail/{s}/{id}?width=32&height=32"),
        "/_matrix/client/v1/media/config".to_owned(),
    ] {
        let anonymous = get(&alice, &path, false).await;
        assert_eq!((anonymous.status, anonymous.errcode().as_str()), (401, "M_MISSING_TOKEN"), "{path}");
    }
    let upload_anonymous =
        reqwest::Client::new().post(format!("{}/_matrix/media/v3/upload", alice.base)).body("x").send().await.unwrap();
    assert_eq!(upload_anonymous.status().as_u16(), 401);
}

#[tokio::test]
async fn legacy_endpoints_follow_the_configuration() {
    // Default "local": local media without a token; never a remote fetch.
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let uri = upload(&alice, b"old client", Some("a.txt"), "text/plain").await;
    let (s, id) = parts(&uri);
    for version in ["v3", "r0"] {
        let got = get(&alice, &format!("/_matrix/media/{version}/download/{s}/{id}"), false).await;
        assert_eq!(got.status, 200, "{version}");
        assert_eq!(got.body, b"old client");
        assert_eq!(got.header("x-content-type-options"), "nosniff");
    }
    let remote = get(&alice, "/_matrix/media/v3/download/elsewhere.test/abc", false).await;
    assert_eq!((remote.status, remote.errcode().as_str()), (404, "M_NOT_FOUND"));
    let config = get(&alice, "/_matrix/media/v3/config", true).await;
    assert_eq!(config.status, 200);

    // "off": everything is M_NOT_FOUND there, the authenticated endpoints still work.
    let server = TestServer::start_with(&[("IEUM_MEDIA__LEGACY_UNAUTHENTICATED", "off")]).await;
    let alice = server.register("alice").await;
    let uri = upload(&alice, b"new client", None, "text/plain").await;
    let (s, id) = parts(&uri);
    let got = get(&alice, &format!("/_matrix/media/v3/download/{s}/{id}"), false).await;
    assert_eq!((got.status, got.errcode().as_str()), (404, "M_NOT_FOUND"));
    let png = upload(&alice, &image_bytes(64, 64, ImageFormat::Png), None, "image/png").await;
    let (s, id) = parts(&png);
    let got = get(&alice, &format!("/_matrix/media/v3/thumbnail/{s}/{id}?width=32&height=32"), false).await;
    assert_eq!((got.status, got.errcode().as_str()), (404, "M_NOT_FOUND"));
    assert_eq!(get(&alice, "/_matrix/media/v3/config", true).await.status, 404);
    assert_eq!(download(&alice, &uri).await.body, b"new client");

    // A freeze: media created after the moment is refused there.
    let server = TestServer::start_with(&[("IEUM_MEDIA__LEGACY_FROZEN_AFTER_MS", "1000")]).await;
    let alice = server.register("alice").await;
    let uri = upload(&alice, b"after the freeze", None, "text/plain").await;
    let (s, id) = parts(&uri);
    let got = get(&alice, &format!("/_matrix/media/v3/download/{s}/{id}"), false).await;
    assert_eq!((got.status, got.errcode().as_str()), (404, "M_NOT_FOUND"));
    assert_eq!(download(&alice, &uri).await.body, b"after the freeze");
}

#[tokio::test]
async fn thumbnails_scale_and_crop_and_are_generated_once() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let png = upload(&alice, &image_bytes(1000, 500, ImageFormat::Png), Some("wide.png"), "image/png").await;

    let scaled = thumbnail(&alice, &png, 320, 240, "scale").await;
    assert_eq!(scaled.status, 200, "{}", String::from_utf8_lossy(&scaled.body));
    assert_eq!(scaled.header("content-type"), "image/png");
    assert_eq!(dimensions(&scaled.body), (320, 160));
    assert_eq!(scaled.header("x-content-type-options"), "nosniff");
    let cropped = thumbnail(&alice, &png, 96, 96, "crop").await;
    assert_eq!(dimensions(&cropped.body), (96, 96));
    // A size between presets gets the covering preset.
    let between = thumbnail(&alice, &png, 50, 40, "crop").await;
    assert_eq!(dimensions(&between.body), (96, 96));
    assert_eq!(between.body, cropped.body);

    // The second request is served from storage: same bytes, no new record.
    let (_, id) = parts(&png);
    let name: ruma::OwnedServerName = server.server_name().try_into().unwrap();
    let stored = server.app().media.thumbnails(&name, &id).await.unwrap();
    assert_eq!(stored.len(), 2, "{stored:?}");
    let again = thumbnail(&alice, &png, 320, 240, "scale").await;
    assert_eq!(again.body, scaled.body);
    let after = server.app().media.thumbnails(&name, &id).await.unwrap();
    assert_eq!(after, stored);

    // A JPEG gives a JPEG thumbnail; the ruma client type parses it.
    let jpeg = upload(&alice, &image_bytes(640, 480, ImageFormat::Jpeg), None, "image/jpeg").await;
    let (server_name, media_id) = jpeg.parts().unwrap();
    let mut request = auth::get_content_thumbnail::v1::Request::new(
        media_id.to_owned(),
        server_name.to_owned(),
        uint!(32),
        uint!(32),
    );
    request.method = Some(ruma::media::Method::Crop);
    let response = alice.send(request).await;
    assert_eq!(response.content_type.as_deref(), Some("image/jpeg"));
    assert_eq!(dimensions(&response.file), (32, 32));

    // Scaling never enlarges.
    let small = upload(&alice, &image_bytes(40, 30, ImageFormat::Png), None, "image/png").await;
    assert_eq!(dimensions(&thumbnail(&alice, &small, 800, 600, "scale").await.body), (40, 30));
}

#[tokio::test]
async fn hostile_and_non_images_are_refused_cleanly() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    // 60000 x 60000 declared in a few hundred bytes: refused from the header, never decoded.
    let bomb = upload(&alice, &png_claiming(60_000, 60_000), Some("bomb.png"), "image/png").await;
    let got = thumbnail(&alice, &bomb, 32, 32, "crop").await;
    assert_eq!((got.status, got.errcode().as_str()), (413, "M_TOO_LARGE"));
    // The original is still downloadable as bytes.
    assert_eq!(download(&alice, &bomb).await.status, 200);

    let text = upload(&alice, b"just text", None, "text/plain").await;
    let got = thumbnail(&alice, &text, 32, 32, "scale").await;
    assert_eq!((got.status, got.errcode().as_str()), (400, "M_UNKNOWN"));
    // Labelled as an image, but not one.
    let fake = upload(&alice, b"\x89PNG\r\n\x1a\nnot really", None, "image/png").await;
    let got = thumbnail(&alice, &fake, 32, 32, "scale").await;
    assert_eq!(got.status, 400, "{}", String::from_utf8_lossy(&got.body));
    // Nonsense sizes.
    let png = upload(&alice, &image_bytes(10, 10, ImageFormat::Png), None, "image/png").await;
    let got = thumbnail(&alice, &png, 0, 32, "scale").await;
    assert_eq!((got.status, got.errcode().as_str()), (400, "M_INVALID_PARAM"));
    let (s, id) = parts(&png);
    let got = get(&alice, &format!("/_matrix/client/v1/media/thumbnail/{s}/{id}?width=-3&height=x"), true).await;
    assert_eq!(got.status, 400);
    // The server is fine afterwards.
    assert_eq!(dimensions(&thumbnail(&alice, &png, 32, 32, "crop").await.body), (32, 32));
}

#[tokio::test]
async fn media_survives_a_restart() {
    let mut server = TestServer::start().await;
    let alice = server.register("alice").await;
    let bytes = image_bytes(200, 100, ImageFormat::Png);
    let uri = upload(&alice, &bytes, Some("kept.png"), "image/png").await;
    let before = thumbnail(&alice, &uri, 96, 96, "crop").await.body;
    server.stop().await;
    server.start_again().await;
    let got = download(&alice, &uri).await;
    assert_eq!(got.body, bytes);
    assert_eq!(got.header("content-disposition"), "inline; filename=kept.png");
    assert_eq!(thumbnail(&alice, &uri, 96, 96, "crop").await.body, before);
    let files = walk(&server.dir.path().join("db/media"));
    assert!(files.iter().all(|f| f.file_name().unwrap().len() == 64), "content-addressed names: {files:?}");
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() { out.extend(walk(&path)) } else { out.push(path) }
    }
    out
}

#[tokio::test]
async fn remote_media_is_fetched_over_federation_and_cached() {
    let mut cluster = Cluster::start(&["a.test", "b.test"]).await;
    let alice = cluster.servers[0].register("alice").await;
    let bob = cluster.servers[1].register("bob").await;
    let bytes = image_bytes(800, 400, ImageFormat::Png);
    let uri = upload(&alice, &bytes, Some("지도.png"), "image/png").await;

    let got = download(&bob, &uri).await;
    assert_eq!(got.status, 200, "{}", String::from_utf8_lossy(&got.body));
    assert_eq!(got.body, bytes);
    assert_eq!(got.header("content-type"), "image/png");
    assert_eq!(got.header("content-disposition"), "inline; filename*=utf-8''%EC%A7%80%EB%8F%84.png");
    let thumb = thumbnail(&bob, &uri, 320, 240, "scale").await;
    assert_eq!(thumb.status, 200, "{}", String::from_utf8_lossy(&thumb.body));
    assert_eq!(dimensions(&thumb.body), (320, 160));
    // Media that does not exist there is M_NOT_FOUND here too.
    let missing: OwnedMxcUri = "mxc://a.test/nosuchmedia".into();
    let got = download(&bob, &missing).await;
    assert_eq!((got.status, got.errcode().as_str()), (404, "M_NOT_FOUND"));

    // With a.test down, b.test answers from its cache...
    cluster.servers[0].stop().await;
    let cached = download(&bob, &uri).await;
    assert_eq!(cached.status, 200);
    assert_eq!(cached.body, bytes);
    let crop = thumbnail(&bob, &uri, 32, 32, "crop").await;
    assert_eq!(dimensions(&crop.body), (32, 32));
    // ...and media it never fetched is a quick 502, not a hang.
    let started = std::time::Instant::now();
    let unreachable: OwnedMxcUri = "mxc://a.test/neverfetched".into();
    let got = download(&bob, &unreachable).await;
    assert_eq!((got.status, got.errcode().as_str()), (502, "M_UNKNOWN"));
    assert!(started.elapsed() < Duration::from_secs(15), "{:?}", started.elapsed());
}

#[tokio::test]
async fn the_federation_media_api_needs_signatures_and_serves_multipart() {
    let cluster = Cluster::start(&["a.test", "b.test"]).await;
    let alice = cluster.servers[0].register("alice").await;
    let uri = upload(&alice, b"for other servers", Some("f.txt"), "text/plain").await;
    let (_, id) = parts(&uri);
    // Unsigned: refused.
    let got = get(&alice, &format!("/_matrix/federation/v1/media/download/{id}"), false).await;
    assert_eq!(got.status, 401);
    // Signed by b.test (through its own federation client): multipart content.
    let b = cluster.servers[1].app();
    let response = b
        .federation
        .client
        .send(
            &ruma::ServerName::parse("a.test").unwrap(),
            ruma::api::federation::authenticated_media::get_content::v1::Request::new(id.clone()),
        )
        .await
        .unwrap();
    match response.content {
        ruma::api::federation::authenticated_media::FileOrLocation::File(content) => {
            assert_eq!(content.file, b"for other servers");
            assert_eq!(content.content_type.as_deref(), Some("text/plain"));
        }
        other => panic!("expected the file, got {other:?}"),
    }
    let _ = UInt::MIN;
}

#[tokio::test]
async fn remote_media_honours_the_closed_federation_policy() {
    let server = TestServer::start_with(&[("IEUM_FEDERATION__ALLOW", "[\"friend.test\"]")]).await;
    let alice = server.register("alice").await;
    let started = std::time::Instant::now();
    let got = download(&alice, &"mxc://stranger.test/abcdef".into()).await;
    assert_eq!((got.status, got.errcode().as_str()), (403, "M_FORBIDDEN"));
    let got = thumbnail(&alice, &"mxc://stranger.test/abcdef".into(), 32, 32, "crop").await;
    assert_eq!((got.status, got.errcode().as_str()), (403, "M_FORBIDDEN"));
    assert!(started.elapsed() < Duration::from_secs(2), "refused without a network attempt");
}
