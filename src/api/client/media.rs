//! Media handlers: uploads (direct and async), authenticated downloads, thumbnails and
//! config (`/_matrix/client/v1/media/*`), and the old unauthenticated
//! `/_matrix/media/{r0,v3}/*` endpoints (as `media.legacy_unauthenticated` allows).
//! The security headers every download carries are added by `media_headers`.

#![allow(deprecated)] // the legacy endpoints' request types are deprecated since Matrix 1.11

use axum::{
    extract::Request,
    http::{HeaderValue, header},
    middleware::Next,
    response::Response,
};
use ruma::api::{
    IncomingResponseExt,
    client::{authenticated_media as auth, media},
};

use crate::{
    api::ruma::Ruma,
    app::App,
    error::{Error, Result},
    service::media::{Access, MediaContent, Method},
};

fn method_of(method: Option<&ruma::media::Method>) -> Method {
    match method {
        Some(ruma::media::Method::Crop) => Method::Crop,
        _ => Method::Scale,
    }
}

/// The largest upload body: `media.max_upload_size` (the route's own body limit).
pub fn upload_limit(app: &App) -> usize {
    app.core.config.media.max_upload_size
}

/// `POST /_matrix/media/v3/upload`
pub async fn upload(
    app: App,
    req: Ruma<media::create_content::v3::Request>,
) -> Result<media::create_content::v3::Response> {
    let user = req.user()?.user_id.clone();
    let body = req.body;
    let uri = app.media.upload(&user, body.file, body.filename, body.content_type).await?;
    Ok(media::create_content::v3::Response::new(uri))
}

/// `POST /_matrix/media/v1/create`
pub async fn create_mxc_uri(
    app: App,
    req: Ruma<media::create_mxc_uri::v1::Request>,
) -> Result<media::create_mxc_uri::v1::Response> {
    let (uri, expires) = app.media.create(&req.user()?.user_id).await?;
    let mut response = media::create_mxc_uri::v1::Response::new(uri);
    response.unused_expires_at = Some(expires);
    Ok(response)
}

/// `PUT /_matrix/media/v3/upload/{serverName}/{mediaId}`
pub async fn upload_async(
    app: App,
    req: Ruma<media::create_content_async::v3::Request>,
) -> Result<media::create_content_async::v3::Response> {
    let user = req.user()?.user_id.clone();
    let body = req.body;
    app.media.fill(&user, &body.server_name, &body.media_id, body.file, body.filename, body.content_type).await?;
    // ruma gives this empty response no constructor (it is non-exhaustive): parse one.
    let empty =
        axum::http::Response::builder().status(200).body(&b"{}"[..]).map_err(|e| Error::internal(e.to_string()))?;
    <media::create_content_async::v3::Response as IncomingResponseExt>::try_from_http_response(empty)
        .map_err(|e| Error::internal(format!("empty upload response: {e}")))
}

/// `GET /_matrix/client/v1/media/config`
pub async fn config(
    app: App,
    _req: Ruma<auth::get_media_config::v1::Request>,
) -> Result<auth::get_media_config::v1::Response> {
    Ok(auth::get_media_config::v1::Response::new(app.media.upload_size()))
}

/// `GET /_matrix/client/v1/media/download/{serverName}/{mediaId}`
pub async fn download(app: App, req: Ruma<auth::get_content::v1::Request>) -> Result<auth::get_content::v1::Response> {
    let body = req.body;
    let MediaContent { bytes, content_type, disposition } =
        app.media.download(&body.server_name, &body.media_id, None, body.timeout_ms, Access::Authenticated).await?;
    Ok(auth::get_content::v1::Response::new(bytes, content_type, disposition))
}

/// `GET /_matrix/client/v1/media/download/{serverName}/{mediaId}/{fileName}`
pub async fn download_as(
    app: App,
    req: Ruma<auth::get_content_as_filename::v1::Request>,
) -> Result<auth::get_content_as_filename::v1::Response> {
    let body = req.body;
    let MediaContent { bytes, content_type, disposition } = app
        .media
        .download(&body.server_name, &body.media_id, Some(body.filename), body.timeout_ms, Access::Authenticated)
        .await?;
    Ok(auth::get_content_as_filename::v1::Response::new(bytes, content_type, disposition))
}

/// `GET /_matrix/client/v1/media/thumbnail/{serverName}/{mediaId}`
pub async fn thumbnail(
    app: App,
    req: Ruma<auth::get_content_thumbnail::v1::Request>,
) -> Result<auth::get_content_thumbnail::v1::Response> {
    let body = req.body;
    let MediaContent { bytes, content_type, disposition } = app
        .media
        .thumbnail(
            &body.server_name,
            &body.media_id,
            body.width,
            body.height,
            method_of(body.method.as_ref()),
            body.timeout_ms,
            Access::Authenticated,
        )
        .await?;
    Ok(auth::get_content_thumbnail::v1::Response::new(bytes, content_type, disposition))
}

/// `GET /_matrix/media/v3/config` (legacy)
pub async fn legacy_config(
    app: App,
    _req: Ruma<media::get_media_config::v3::Request>,
) -> Result<media::get_media_config::v3::Response> {
    Ok(media::get_media_config::v3::Response::new(app.media.legacy_upload_size()?))
}

/// `GET /_matrix/media/v3/download/{serverName}/{mediaId}` (legacy, unauthenticated)
pub async fn legacy_download(
    app: App,
    req: Ruma<media::get_content::v3::Request>,
) -> Result<media::get_content::v3::Response> {
    let body = req.body;
    let MediaContent { bytes, content_type, disposition } =
        app.media.download(&body.server_name, &body.media_id, None, body.timeout_ms, Access::Legacy).await?;
    let mut response = media::get_content::v3::Response::new(bytes, content_type, disposition);
    response.cross_origin_resource_policy = None;
    Ok(response)
}

/// `GET /_matrix/media/v3/download/{serverName}/{mediaId}/{fileName}` (legacy, unauthenticated)
pub async fn legacy_download_as(
    app: App,
    req: Ruma<media::get_content_as_filename::v3::Request>,
) -> Result<media::get_content_as_filename::v3::Response> {
    let body = req.body;
    let MediaContent { bytes, content_type, disposition } = app
        .media
        .download(&body.server_name, &body.media_id, Some(body.filename), body.timeout_ms, Access::Legacy)
        .await?;
    let mut response = media::get_content_as_filename::v3::Response::new(bytes, content_type, disposition);
    response.cross_origin_resource_policy = None;
    Ok(response)
}

/// `GET /_matrix/media/v3/thumbnail/{serverName}/{mediaId}` (legacy, unauthenticated)
pub async fn legacy_thumbnail(
    app: App,
    req: Ruma<media::get_content_thumbnail::v3::Request>,
) -> Result<media::get_content_thumbnail::v3::Response> {
    let body = req.body;
    let MediaContent { bytes, content_type, disposition } = app
        .media
        .thumbnail(
            &body.server_name,
            &body.media_id,
            body.width,
            body.height,
            method_of(body.method.as_ref()),
            body.timeout_ms,
            Access::Legacy,
        )
        .await?;
    let mut response = media::get_content_thumbnail::v3::Response::new(bytes, content_type, disposition);
    response.cross_origin_resource_policy = None;
    Ok(response)
}

/// What a browser may do with served media: nothing active. A strict sandboxing CSP, no
/// type sniffing (an "image" that is really HTML stays an image), and embeddable from any
/// origin (web clients load media cross-origin). Added to every media response, errors too.
pub async fn media_headers(request: Request, next: Next) -> Response {
    let mut response = next.run(request).await;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "sandbox; default-src 'none'; script-src 'none'; plugin-types application/pdf; \
             style-src 'unsafe-inline'; media-src 'self'; object-src 'self';",
        ),
    );
    headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    headers.insert(
        header::HeaderName::from_static("cross-origin-resource-policy"),
        HeaderValue::from_static("cross-origin"),
    );
    response
}
