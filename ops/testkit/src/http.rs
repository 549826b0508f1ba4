//! A minimal HTTP/1.1 client over hyper for tests and load tools: one keep-alive connection
//! per `Conn`, bodies sent whole (Content-Length) or in chunks (no Content-Length).

use std::convert::Infallible;
use std::net::SocketAddr;

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Frame;
use hyper::client::conn::http1::SendRequest;
use hyper::header::{HeaderMap, HeaderName, HeaderValue, CONTENT_TYPE};
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

type Body = BoxBody<Bytes, Infallible>;

/// One answer, read whole.
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Reply {
    /// The body as JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|err| {
            panic!(
                "body is not JSON ({err}): {:?}",
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    /// A header as text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .get(name)
            .map(|v| v.to_str().expect("header is text"))
    }
}

/// A keep-alive connection to one server.
pub struct Conn {
    addr: SocketAddr,
    sender: Option<SendRequest<Body>>,
}

impl Conn {
    /// A connection made on first use.
    pub fn new(addr: SocketAddr) -> Self {
        Self { addr, sender: None }
    }

    async fn sender(&mut self) -> std::io::Result<&mut SendRequest<Body>> {
        let usable = matches!(&self.sender, Some(s) if !s.is_closed());
        if !usable {
            let stream = TcpStream::connect(self.addr).await?;
            stream.set_nodelay(true)?;
            let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
                .await
                .map_err(std::io::Error::other)?;
            tokio::spawn(async move {
                let _ = connection.await;
            });
            self.sender = Some(sender);
        }
        Ok(self.sender.as_mut().expect("just set"))
    }

    /// Sends a request and reads the whole answer.
    pub async fn send(
        &mut self,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
        body: Body,
    ) -> std::io::Result<Reply> {
        let mut request = Request::builder()
            .method(method)
            .uri(path)
            .header("host", self.addr.to_string());
        for (name, value) in headers {
            request = request.header(
                HeaderName::from_bytes(name.as_bytes()).expect("header name"),
                HeaderValue::from_bytes(value.as_bytes()).expect("header value"),
            );
        }
        let request = request.body(body).expect("request");
        let sender = self.sender().await?;
        sender.ready().await.map_err(std::io::Error::other)?;
        let response = match sender.send_request(request).await {
            Ok(response) => response,
            Err(err) => {
                self.sender = None;
                return Err(std::io::Error::other(err));
            }
        };
        let (parts, body) = response.into_parts();
        let body = body
            .collect()
            .await
            .map_err(std::io::Error::other)?
            .to_bytes();
        Ok(Reply {
            status: parts.status,
            headers: parts.headers,
            body,
        })
    }

    /// `POST /v1/orders` with a JSON body and extra headers.
    pub async fn post_order(&mut self, headers: &[(&str, &str)], body: &str) -> Reply {
        let mut all = vec![("content-type", "application/json")];
        all.extend_from_slice(headers);
        self.send(Method::POST, "/v1/orders", &all, full(body.to_owned()))
            .await
            .expect("request sent")
    }

    /// `POST path` with a JSON body.
    pub async fn post_json(&mut self, path: &str, body: &str) -> Reply {
        let headers = [("content-type", "application/json")];
        self.send(Method::POST, path, &headers, full(body.to_owned()))
            .await
            .expect("request sent")
    }

    /// `GET path`.
    pub async fn get(&mut self, path: &str) -> Reply {
        self.send(Method::GET, path, &[], full(Bytes::new()))
            .await
            .expect("request sent")
    }
}

/// A body sent whole, with Content-Length.
pub fn full(body: impl Into<Bytes>) -> Body {
    Full::new(body.into()).boxed()
}

/// A body sent in chunks, without Content-Length (chunked transfer encoding).
pub fn chunked(chunks: Vec<Bytes>) -> Body {
    let frames = futures::stream::iter(chunks.into_iter().map(|c| Ok(Frame::data(c))));
    StreamBody::new(frames).boxed()
}

/// Whether an answer is a problem document.
pub fn is_problem(reply: &Reply) -> bool {
    reply
        .headers
        .get(CONTENT_TYPE)
        .is_some_and(|v| v == "application/problem+json")
}
