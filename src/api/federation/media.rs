//! Federation media endpoints: our own media (content and thumbnails) for other servers,
//! X-Matrix authenticated, answered as multipart/mixed (JSON metadata, then the content).

use ruma::api::federation::authenticated_media::{get_content, get_content_thumbnail};

use crate::{api::ruma::Ruma, app::App, error::Result, service::media::Method};

/// `GET /_matrix/federation/v1/media/download/{mediaId}`
pub async fn download(app: App, req: Ruma<get_content::v1::Request>) -> Result<get_content::v1::Response> {
    req.origin()?;
    let (metadata, content) = app.media.federation_download(&req.body.media_id, req.body.timeout_ms).await?;
    Ok(get_content::v1::Response::new(metadata, content))
}

/// `GET /_matrix/federation/v1/media/thumbnail/{mediaId}`
pub async fn thumbnail(
    app: App,
    req: Ruma<get_content_thumbnail::v1::Request>,
) -> Result<get_content_thumbnail::v1::Response> {
    req.origin()?;
    let body = req.body;
    let method = match body.method {
        Some(ruma::media::Method::Crop) => Method::Crop,
        _ => Method::Scale,
    };
    let (metadata, content) =
        app.media.federation_thumbnail(&body.media_id, body.width, body.height, method, body.timeout_ms).await?;
    Ok(get_content_thumbnail::v1::Response::new(metadata, content))
}
