//! Serde models of the `/ips/`, `/hosts/` and `/files/` documents (reference `seclytics-api.md` §3–§4).

/// A body that is not a SecLytics document.
#[derive(Debug, Clone, thiserror::Error)]
pub enum DocumentError {
    #[error("response is not JSON: {0}")]
    NotJson(String),
    #[error("response is not a SecLytics document: {0}")]
    WrongShape(String),
    #[error("API error in a 200 response: {0}")]
    ApiError(String),
}

/// One parsed document. (Skeleton: the tokens work fills in the typed fields.)
#[derive(Debug, Clone, Default, serde::Deserialize)]
pub struct Document {}

/// Parses a response body. Never panics: anything that is not a document object is a [`DocumentError`].
pub fn parse_document(body: &str) -> Result<Document, DocumentError> {
    let value: serde_json::Value =
        serde_json::from_str(body).map_err(|e| DocumentError::NotJson(e.to_string()))?;
    let object = value.as_object().ok_or_else(|| DocumentError::WrongShape("not a JSON object".into()))?;
    if let Some(error) = object.get("error") {
        return Err(DocumentError::ApiError(error.to_string()));
    }
    Ok(Document {})
}
