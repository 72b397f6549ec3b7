#pragma once
/// Everything of ferry's I/O layer: the io_context, timers and deadlines, TCP sockets, files.
#include "ferry/io/aligned_buffer.hpp"
#include "ferry/io/deadline.hpp"
#include "ferry/io/endpoint.hpp"
#include "ferry/io/file.hpp"
#include "ferry/io/io_backend.hpp"
#include "ferry/io/io_context.hpp"
#include "ferry/io/operation.hpp"
#include "ferry/io/tcp_listener.hpp"
#include "ferry/io/tcp_socket.hpp"
#include "ferry/io/timer_awaiter.hpp"
