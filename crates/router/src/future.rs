use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use llm_layers_core::{ChatStream, ErrorKind, LlmError};

use crate::Route;
use crate::order::Trial;

pin_project_lite::pin_project! {
    #[project = KindProj]
    enum Kind<F> {
        Rejected { error: Option<LlmError> },
        Routed {
            #[pin]
            fut: F,
            route: Option<Route>,
            // Held until the call commits or fails: a first attempt on trust in flight.
            trial: Option<Trial>,
        },
    }
}

pin_project_lite::pin_project! {
    /// The response future of [`Router`](crate::Router): the inner call, whose stream's
    /// meta gets the [`Route`], or the routing error.
    pub struct ResponseFuture<F> {
        #[pin]
        kind: Kind<F>,
    }
}

impl<F> ResponseFuture<F> {
    pub(crate) fn routed(fut: F, route: Route, trial: Option<Trial>) -> Self {
        ResponseFuture {
            kind: Kind::Routed {
                fut,
                route: Some(route),
                trial,
            },
        }
    }

    pub(crate) fn rejected(error: LlmError) -> Self {
        ResponseFuture {
            kind: Kind::Rejected { error: Some(error) },
        }
    }
}

impl<F> std::fmt::Debug for ResponseFuture<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}

impl<F> Future for ResponseFuture<F>
where
    F: Future<Output = Result<ChatStream, LlmError>>,
{
    type Output = Result<ChatStream, LlmError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().kind.project() {
            KindProj::Rejected { error } => Poll::Ready(Err(error.take().unwrap_or_else(|| {
                LlmError::new(ErrorKind::Cancelled).with_message("polled after completion")
            }))),
            KindProj::Routed { fut, route, trial } => {
                let out = ready!(fut.poll(cx));
                trial.take();
                let mut stream = out?;
                if let Some(route) = route.take() {
                    stream.meta_mut().extensions.insert(route);
                }
                Poll::Ready(Ok(stream))
            }
        }
    }
}
