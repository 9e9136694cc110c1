//! The half of Pingora's `IO` that the gateway's own streams (the framed client stream, the
//! raw stream under TLS) pass straight to the socket: writes, shutdown, ids and digests.
//! A type uses it with `fn io(&self) -> Option<&Stream>` and `fn io_mut(&mut self)`.

macro_rules! delegate_write {
    ($t:ty) => {
        impl tokio::io::AsyncWrite for $t {
            fn poll_write(
                mut self: std::pin::Pin<&mut Self>,
                cx: &mut std::task::Context<'_>,
                data: &[u8],
            ) -> std::task::Poll<std::io::Result<usize>> {
                match self.io_mut() {
                    Some(s) => std::pin::Pin::new(s).poll_write(cx, data),
                    None => std::task::Poll::Ready(Err(std::io::ErrorKind::NotConnected.into())),
                }
            }

            fn poll_write_vectored(
                mut self: std::pin::Pin<&mut Self>,
                cx: &mut std::task::Context<'_>,
                bufs: &[std::io::IoSlice<'_>],
            ) -> std::task::Poll<std::io::Result<usize>> {
                match self.io_mut() {
                    Some(s) => std::pin::Pin::new(s).poll_write_vectored(cx, bufs),
                    None => std::task::Poll::Ready(Err(std::io::ErrorKind::NotConnected.into())),
                }
            }

            fn is_write_vectored(&self) -> bool {
                self.io().is_some_and(|s| s.is_write_vectored())
            }

            fn poll_flush(mut self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<std::io::Result<()>> {
                match self.io_mut() {
                    Some(s) => std::pin::Pin::new(s).poll_flush(cx),
                    None => std::task::Poll::Ready(Ok(())),
                }
            }

            fn poll_shutdown(mut self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<std::io::Result<()>> {
                match self.io_mut() {
                    Some(s) => std::pin::Pin::new(s).poll_shutdown(cx),
                    None => std::task::Poll::Ready(Ok(())),
                }
            }
        }
    };
}

macro_rules! delegate_shutdown {
    ($t:ty) => {
        #[async_trait::async_trait]
        impl pingora_core::protocols::Shutdown for $t {
            async fn shutdown(&mut self) {
                if let Some(s) = self.io_mut() {
                    pingora_core::protocols::Shutdown::shutdown(&mut **s).await;
                }
            }
        }
    };
}

/// Everything but writing and shutdown: identity, TLS facts, digests.
macro_rules! delegate_meta {
    ($t:ty) => {
        impl pingora_core::protocols::UniqueID for $t {
            fn id(&self) -> pingora_core::protocols::UniqueIDType {
                self.io().map(|s| s.id()).unwrap_or_default()
            }
        }

        impl pingora_core::protocols::Ssl for $t {
            fn get_ssl(&self) -> Option<&pingora_core::protocols::tls::TlsRef> {
                self.io()?.get_ssl()
            }
            fn get_ssl_digest(&self) -> Option<std::sync::Arc<pingora_core::protocols::tls::SslDigest>> {
                self.io()?.get_ssl_digest()
            }
            fn selected_alpn_proto(&self) -> Option<pingora_core::protocols::ALPN> {
                self.io()?.selected_alpn_proto()
            }
        }

        impl pingora_core::protocols::GetTimingDigest for $t {
            fn get_timing_digest(&self) -> Vec<Option<pingora_core::protocols::TimingDigest>> {
                self.io().map(|s| s.get_timing_digest()).unwrap_or_default()
            }
            fn get_read_pending_time(&self) -> std::time::Duration {
                self.io().map(|s| s.get_read_pending_time()).unwrap_or_default()
            }
            fn get_write_pending_time(&self) -> std::time::Duration {
                self.io().map(|s| s.get_write_pending_time()).unwrap_or_default()
            }
        }

        impl pingora_core::protocols::GetProxyDigest for $t {
            fn get_proxy_digest(&self) -> Option<std::sync::Arc<pingora_core::protocols::raw_connect::ProxyDigest>> {
                self.io()?.get_proxy_digest()
            }
            fn set_proxy_digest(&mut self, digest: pingora_core::protocols::raw_connect::ProxyDigest) {
                if let Some(s) = self.io_mut() {
                    s.set_proxy_digest(digest);
                }
            }
        }

        impl pingora_core::protocols::GetSocketDigest for $t {
            fn get_socket_digest(&self) -> Option<std::sync::Arc<pingora_core::protocols::SocketDigest>> {
                self.io()?.get_socket_digest()
            }
            fn set_socket_digest(&mut self, digest: pingora_core::protocols::SocketDigest) {
                if let Some(s) = self.io_mut() {
                    s.set_socket_digest(digest);
                }
            }
        }
    };
}

/// Every IO trait Pingora needs, delegated to `io()`/`io_mut()`.
macro_rules! delegate_stream {
    ($t:ty) => {
        super::io::delegate_write!($t);
        super::io::delegate_shutdown!($t);
        super::io::delegate_meta!($t);
    };
}

pub(crate) use {delegate_meta, delegate_shutdown, delegate_stream, delegate_write};
