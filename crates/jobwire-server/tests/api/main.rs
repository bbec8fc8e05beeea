//! Black-box tests of `jobwire serve`: real servers on free ports, real
//! WebSocket / SSE / HTTP clients, real redis-server processes where several
//! instances must share a Redis.

mod data_loss;
mod hardening;
mod helpers;
mod live;
mod openapi;
mod operations;
mod recovery;
mod rest;
