//! The TCP side: one task per client connection, each with its own upstream connection.

use crate::frame::{Frame, HEADER_LEN};
use crate::system::NodeInfo;
use crate::translate::{translate_request, translate_response, Action};
use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt, BufReader, BufWriter};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

/// Accepts clients forever; each gets its own connection to `upstream`.
pub async fn serve(
    listener: TcpListener,
    upstream: String,
    cluster_name: String,
) -> std::io::Result<()> {
    loop {
        let (client, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                // E.g. out of file descriptors: keep serving the connections that exist.
                tracing::error!(error = %e, "accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        let upstream = upstream.clone();
        let cluster_name = cluster_name.clone();
        tokio::spawn(async move {
            tracing::debug!(%peer, "client connected");
            match handle(client, &upstream, cluster_name).await {
                Ok(()) => tracing::debug!(%peer, "client disconnected"),
                Err(e) => tracing::warn!(%peer, error = %e, "connection closed"),
            }
        });
    }
}

/// Reads one frame; `Ok(None)` at a clean end of stream.
async fn read_frame<R: AsyncRead + Unpin>(r: &mut R) -> std::io::Result<Option<Frame>> {
    let mut header = [0u8; HEADER_LEN];
    match r.read_exact(&mut header).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let (mut frame, len) = Frame::parse_header(&header).map_err(|e| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("frame body of {} bytes", e.0),
        )
    })?;
    let mut body = BytesMut::zeroed(len);
    r.read_exact(&mut body).await?;
    frame.body = body.freeze();
    Ok(Some(frame))
}

async fn handle(client: TcpStream, upstream: &str, cluster_name: String) -> std::io::Result<()> {
    let node = NodeInfo {
        address: client.local_addr()?.ip(),
        cluster_name,
    };
    let server = TcpStream::connect(upstream).await.map_err(|e| {
        std::io::Error::new(e.kind(), format!("connecting to upstream {upstream}: {e}"))
    })?;
    client.set_nodelay(true)?;
    server.set_nodelay(true)?;
    let (client_r, client_w) = client.into_split();
    let (server_r, server_w) = server.into_split();

    // Two producers write to the client (Cassandra's responses and the adapter's own replies),
    // so its write half belongs to one task fed by a channel.
    let (to_client, mut rx) = mpsc::channel::<Bytes>(1024);
    let writer = async move {
        let mut w = BufWriter::new(client_w);
        while let Some(first) = rx.recv().await {
            w.write_all(&first).await?;
            // Coalesce whatever else is ready into one write.
            while let Ok(more) = rx.try_recv() {
                w.write_all(&more).await?;
            }
            w.flush().await?;
        }
        Ok::<_, std::io::Error>(())
    };

    let to_client_down = to_client.clone();
    let downstream = async move {
        let mut r = BufReader::with_capacity(64 * 1024, server_r);
        while let Some(frame) = read_frame(&mut r).await? {
            if let Some(f) = translate_response(frame) {
                if to_client_down.send(f.encode()).await.is_err() {
                    break;
                }
            }
        }
        Ok::<_, std::io::Error>(())
    };

    let upstream_task = async move {
        let mut r = BufReader::with_capacity(64 * 1024, client_r);
        let mut w = BufWriter::with_capacity(64 * 1024, server_w);
        let mut out = BytesMut::new();
        while let Some(frame) = read_frame(&mut r).await? {
            tracing::trace!(
                opcode = frame.opcode,
                stream = frame.stream,
                len = frame.body.len(),
                "request"
            );
            match translate_request(frame, &node) {
                Action::Forward(f) => {
                    out.clear();
                    f.encode_into(&mut out);
                    w.write_all(&out).await?;
                }
                Action::Reply(f) => {
                    if to_client.send(f.encode()).await.is_err() {
                        break;
                    }
                }
            }
            // Flush once the client has nothing more buffered: batches pipelined requests.
            if r.buffer().is_empty() {
                w.flush().await?;
            }
        }
        Ok::<_, std::io::Error>(())
    };

    // Whichever side ends first ends the connection; dropping the others closes both sockets.
    tokio::select! {
        r = upstream_task => r,
        r = downstream => r,
        r = writer => r,
    }
}
