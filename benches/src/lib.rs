//! Shared pieces of the llm-layers benchmarks.

use bytes::Bytes;
use llm_layers_core::{ChatRequest, Message};

/// A request like the gateway sends: one user message, streaming, `max_tokens` tokens.
pub fn request(max_tokens: u32) -> ChatRequest {
    let mut r = ChatRequest::new(
        "openai/gpt-4o-mini",
        vec![Message::user("Write one short sentence about latency.")],
    );
    r.body_mut().stream = Some(true);
    r.body_mut().max_tokens = Some(max_tokens);
    r
}

/// An OpenRouter-like SSE body of `n` content events, each about 290 bytes, then `[DONE]`.
pub fn sse_body(n: usize) -> Bytes {
    let mut out = Vec::with_capacity(n * 300 + 64);
    out.extend_from_slice(b": OPENROUTER PROCESSING\n\n");
    for i in 0..n {
        out.extend_from_slice(
            format!(
                "data: {{\"id\":\"gen-1700000000-AbCdEfGhIjKlMnOp\",\"provider\":\"OpenAI\",\"model\":\"openai/gpt-4o\",\"object\":\"chat.completion.chunk\",\"created\":1700000000,\"choices\":[{{\"index\":0,\"delta\":{{\"role\":\"assistant\",\"content\":\"token {i:05} \"}},\"finish_reason\":null,\"native_finish_reason\":null}}]}}\n\n"
            )
            .as_bytes(),
        );
    }
    out.extend_from_slice(b"data: [DONE]\n\n");
    Bytes::from(out)
}
