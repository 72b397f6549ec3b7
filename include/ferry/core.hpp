#pragma once
/// Everything of ferry's core: tasks, waiting, concurrency, scopes, schedulers, errors.
#include "ferry/core/async_mutex.hpp"
#include "ferry/core/async_scope.hpp"
#include "ferry/core/concepts.hpp"
#include "ferry/core/error.hpp"
#include "ferry/core/inline_scheduler.hpp"
#include "ferry/core/manual_scheduler.hpp"
#include "ferry/core/result.hpp"
#include "ferry/core/resume_on.hpp"
#include "ferry/core/sync_wait.hpp"
#include "ferry/core/task.hpp"
#include "ferry/core/thread_pool.hpp"
#include "ferry/core/when_all.hpp"
