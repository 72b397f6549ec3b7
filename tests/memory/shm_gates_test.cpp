#include "ferry/memory/region_registry.hpp"
#include "ferry/memory/shared_buffer.hpp"
#include "ferry/memory/shm_gates.hpp"

#include "../support/own_pid_namespace.hpp"

#include <doctest/doctest.h>

#include <atomic>
#include <chrono>
#include <csignal>
#include <cstdio>
#include <fcntl.h>
#include <regex>
#include <sched.h>
#include <string>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <thread>
#include <unistd.h>

using ferry::access;
using ferry::errc;
using ferry::shm_gates;

namespace {
/// Forks a peer that takes a ticket through `gate` of `owner`'s table and exits without giving it back, as
/// after a crash (_exit skips the pass's destructor: the ticket stays marked); exits with 0 once it held it.
pid_t exit_holding_a_ticket(const shm_gates& owner, std::uint32_t gate, std::uint64_t epoch) {
  pid_t child = ::fork();
  REQUIRE(child >= 0);
  if (child == 0) {
    auto peer = shm_gates::attach(owner.name());
    if (!peer)
      ::_exit(2);
    auto pass = peer->enter(gate, epoch, {});
    if (!pass)
      ::_exit(3);
    ::_exit(0);
  }
  return child;
}
} // namespace

TEST_SUITE("shm_gates") {
  TEST_CASE("a peer passes an open gate with its epoch, and no other") {
    auto owner = shm_gates::create();
    REQUIRE(owner);
    auto peer = shm_gates::attach(owner->name());
    REQUIRE(peer);
    auto opened = owner->open_gate({});
    REQUIRE(opened);
    auto [gate, epoch] = *opened;
    {
      auto pass = peer->enter(gate, epoch, {});
      CHECK(pass.has_value());
    }
    auto stale = peer->enter(gate, epoch + 1, {});
    REQUIRE_FALSE(stale);
    CHECK(stale.error() == errc::out_of_bounds);
    CHECK(peer->enter(shm_gates::gate_count, epoch, {}).error() == errc::out_of_bounds);
    REQUIRE(owner->close_gate(gate));
    auto closed = peer->enter(gate, epoch, {});
    REQUIRE_FALSE(closed);
    CHECK(closed.error() == errc::out_of_bounds);
    // the gate opened again for another region has a new epoch: the old descriptor does not pass it
    auto reopened = owner->open_gate({});
    REQUIRE(reopened);
    CHECK(reopened->first == gate);
    CHECK(reopened->second == epoch + 1);
    CHECK_FALSE(peer->enter(gate, epoch, {}));
    CHECK(peer->enter(gate, reopened->second, {}).has_value());
  }

  TEST_CASE("a gate does not close while a live process copies through it") {
    auto owner = shm_gates::create();
    REQUIRE(owner);
    auto peer = shm_gates::attach(owner->name());
    REQUIRE(peer);
    auto [gate, epoch] = *owner->open_gate({});
    auto other = *owner->open_gate({});
    {
      auto pass = peer->enter(gate, epoch, {});
      REQUIRE(pass);
      CHECK_FALSE(owner->close_gate(gate));            // refused: a copy is in progress
      CHECK(peer->enter(gate, epoch, {}).has_value()); // still open for others
      CHECK(owner->close_gate(other.first));           // another gate is not held
    }
    CHECK(owner->close_gate(gate));
  }

  TEST_CASE("a peer waits for an owner held up in the middle of closing a gate, and goes ahead when it "
            "opens again") {
    auto owner = shm_gates::create();
    REQUIRE(owner);
    auto peer = shm_gates::attach(owner->name());
    REQUIRE(peer);
    auto [gate, epoch] = *owner->open_gate({});
    // why: the owner's thread stopped between marking the gate closing and finding a copy in progress, which
    // no call can hold it at: the test writes the gate's word in the table itself (after the magic and the
    // namespace come the gates, epoch << 2 | state, 2 meaning closing), checking first that it holds what an
    // open gate of this epoch does
    int fd = ::shm_open(owner->name().c_str(), O_RDWR, 0);
    REQUIRE(fd >= 0);
    const std::size_t span = 16 + 8 * shm_gates::gate_count;
    void* p = ::mmap(nullptr, span, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    ::close(fd);
    REQUIRE(p != MAP_FAILED);
    auto* word = reinterpret_cast<std::atomic<std::uint64_t>*>(static_cast<char*>(p) + 16 + 8 * gate);
    REQUIRE(word->load() == ((epoch << 2) | 1));
    word->store((epoch << 2) | 2);
    std::thread owner_thread([word, e = epoch] {
      std::this_thread::sleep_for(std::chrono::milliseconds(20)); // held up a while, then it reopens
      word->store((e << 2) | 1);
    });
    auto pass = peer->enter(gate, epoch, {});
    owner_thread.join();
    CHECK(pass.has_value());
    // an owner that stays held up longer than the peer's patience: the peer gives up, saying so
    word->store((epoch << 2) | 2);
    auto t0 = std::chrono::steady_clock::now();
    auto refused = peer->enter(gate, epoch, {});
    REQUIRE_FALSE(refused);
    CHECK(refused.error() == errc::out_of_bounds);
    CHECK(std::chrono::steady_clock::now() - t0 >= shm_gates::closing_patience);
    word->store((epoch << 2) | 1);
    ::munmap(p, span);
  }

  TEST_CASE("a ticket left behind by a process that died does not hold a gate") {
    auto owner = shm_gates::create();
    REQUIRE(owner);
    auto [gate, epoch] = *owner->open_gate({});
    pid_t child = exit_holding_a_ticket(*owner, gate, epoch);
    int status = 0;
    REQUIRE(::waitpid(child, &status, 0) == child);
    REQUIRE(WIFEXITED(status));
    REQUIRE(WEXITSTATUS(status) == 0);
    CHECK(owner->close_gate(gate));
  }

  TEST_CASE("a ticket left behind by a process that died does not hold a gate before its parent reaps it") {
    // why: a process that exited stays a zombie until its parent waits for it, and kill(pid, 0) still finds
    // it; the owner here is that parent, as a decode process that forked its prefill peers would be
    auto owner = shm_gates::create();
    REQUIRE(owner);
    auto [gate, epoch] = *owner->open_gate({});
    pid_t child = exit_holding_a_ticket(*owner, gate, epoch);
    ::siginfo_t info{};
    REQUIRE(::waitid(P_PID, static_cast<id_t>(child), &info, WEXITED | WNOWAIT) == 0); // exited, not reaped
    REQUIRE(info.si_code == CLD_EXITED);
    REQUIRE(info.si_status == 0);
    REQUIRE(::kill(child, 0) == 0); // still there, as a zombie
    CHECK(owner->close_gate(gate));
    REQUIRE(::waitpid(child, nullptr, 0) == child);
  }

  TEST_CASE("a ticket left behind by a process that died does not hold a gate once its id names another") {
    int code = ferry_test::in_own_pid_namespace([] {
      auto owner = shm_gates::create();
      if (!owner)
        return 3;
      auto [gate, epoch] = *owner->open_gate({});
      pid_t peer = ::fork();
      if (peer == 0) {
        auto view = shm_gates::attach(owner->name());
        if (!view)
          ::_exit(2);
        auto pass = view->enter(gate, epoch, {});
        ::_exit(pass ? 0 : 3); // why: _exit skips the pass's destructor: the ticket stays marked
      }
      int status = 0;
      if (::waitpid(peer, &status, 0) != peer || !WIFEXITED(status) || WEXITSTATUS(status) != 0)
        return 4;
      // why: start times count clock ticks (10 ms); a real reuse of an id comes far later
      std::this_thread::sleep_for(std::chrono::milliseconds(30));
      if (!ferry_test::next_pid_is(peer))
        return ferry_test::no_own_pid_namespace;
      pid_t sleeper = ::fork();
      if (sleeper == 0) {
        ::pause();
        ::_exit(0);
      }
      int result = sleeper != peer ? 5 : owner->close_gate(gate) ? 0 : 6;
      ::kill(sleeper, SIGKILL);
      ::waitpid(sleeper, nullptr, 0);
      return result;
    });
    if (code == ferry_test::no_own_pid_namespace) {
      MESSAGE("skipped: this host does not let a new PID namespace mount its own /proc or choose its next "
              "process id");
      return;
    }
    CHECK(code == 0); // 6: the gate stayed open for the process that took the dead one's id
  }

  TEST_CASE("attaching to something that is not a gate table fails cleanly") {
    auto other = ferry::shared_buffer::create(64);
    REQUIRE(other);
    auto a = shm_gates::attach(other->name());
    REQUIRE_FALSE(a);
    CHECK(a.error() == errc::peer_unreachable);
    CHECK_FALSE(shm_gates::attach("/ferry-no-such-table"));
    // a name that is a FIFO in /dev/shm, not a shared-memory object
    const std::string fifo = "/ferry-test-fifo-" + std::to_string(::getpid());
    REQUIRE(::mkfifo(("/dev/shm" + fifo).c_str(), 0600) == 0);
    auto f = shm_gates::attach(fifo);
    ::unlink(("/dev/shm" + fifo).c_str());
    REQUIRE_FALSE(f);
    CHECK(f.error().message().find("not a shared-memory object") != std::string::npos);
  }

  TEST_CASE("a table of an owner in another PID namespace is refused: its tickets name other processes") {
    // why: this process knows its namespace before it forks: the owner, forked into another one, must not
    // take this process's for its own
    REQUIRE(ferry::detail::pid_namespace_id() != 0);
    int lines[2];
    REQUIRE(::pipe(lines) == 0);
    pid_t child = ::fork();
    REQUIRE(child >= 0);
    if (child == 0) {
      // why: a new PID namespace takes effect for the children of the process that makes it
      if (::unshare(CLONE_NEWPID) != 0)
        ::_exit(2);
      pid_t owner = ::fork();
      if (owner == 0) {
        ::prctl(PR_SET_PDEATHSIG, SIGKILL);
        auto gates = shm_gates::create();
        if (!gates)
          ::_exit(3);
        std::string line = gates->name() + "\n";
        (void)!::write(lines[1], line.data(), line.size());
        ::pause();
        ::_exit(0);
      }
      int status = 0;
      ::waitpid(owner, &status, 0);
      ::_exit(0);
    }
    ::close(lines[1]);
    std::string name;
    char c;
    while (::read(lines[0], &c, 1) == 1 && c != '\n')
      name += c;
    ::close(lines[0]);
    REQUIRE_FALSE(name.empty());
    CHECK(name.find("/ferry-1.") == 0); // the owner is process 1 of its namespace
    auto peer = shm_gates::attach(name);
    CHECK_FALSE(peer);
    if (!peer) {
      CHECK(peer.error() == errc::peer_unreachable);
      CHECK(peer.error().message().find("another PID namespace") != std::string::npos);
    }
    ::kill(child, SIGKILL);
    ::waitpid(child, nullptr, 0);
    ::shm_unlink(name.c_str()); // why: its owner was killed, and no process of this namespace reaps it
  }

  TEST_CASE("shared objects have names of their own, and only this PID namespace's orphans are removed") {
    auto a = ferry::shared_buffer::create(64), b = ferry::shared_buffer::create(64);
    REQUIRE(a);
    REQUIRE(b);
    const std::string own =
        std::to_string(::getpid()) + "\\." + std::to_string(ferry::detail::pid_namespace_id());
    CHECK(std::regex_match(a->name(), std::regex("/ferry-" + own + "-[0-9]+-[0-9a-f]{16}")));
    CHECK(a->name() != b->name());
    pid_t gone = ::fork(); // a process id that is free once it has been waited for
    REQUIRE(gone >= 0);
    if (gone == 0)
      ::_exit(0);
    ::waitpid(gone, nullptr, 0);
    const std::string ns = std::to_string(ferry::detail::pid_namespace_id());
    const std::string here = "/ferry-" + std::to_string(gone) + "." + ns + "-0-0000000000000001";
    const std::string elsewhere = "/ferry-" + std::to_string(gone) + "." + ns + "1-0-0000000000000002";
    for (const auto& name : {here, elsewhere}) {
      int fd = ::shm_open(name.c_str(), O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
      REQUIRE(fd >= 0);
      ::close(fd);
    }
    ferry::shared_buffer::remove_orphans();
    struct ::stat st {};
    CHECK(::stat(("/dev/shm" + here).c_str(), &st) != 0);      // its process ended: removed
    CHECK(::stat(("/dev/shm" + elsewhere).c_str(), &st) == 0); // another namespace's process id: kept
    ::shm_unlink(elsewhere.c_str());
    CHECK(::stat(("/dev/shm" + a->name()).c_str(), &st) == 0); // a live process's: kept
  }

  TEST_CASE("the registry puts each shared region behind a gate and refuses to drop it while a peer copies") {
    ferry::region_registry regs;
    auto buf = ferry::shared_buffer::create(1 << 20);
    REQUIRE(buf);
    std::vector<std::byte> plain(4096);
    REQUIRE(regs.add(plain.data(), plain.size(), access::read_write)); // private memory: no gate
    CHECK(regs.shm_gates_name().empty());
    REQUIRE(regs.add(buf->data(), buf->size(), access::read_write, buf->name()));
    auto exposed = regs.exposed();
    REQUIRE(exposed.size() == 2);
    CHECK(exposed[0].shm_gate == ferry::region_descriptor::no_gate);
    REQUIRE(exposed[1].shm_gate != ferry::region_descriptor::no_gate);
    REQUIRE_FALSE(regs.shm_gates_name().empty());
    auto peer = shm_gates::attach(regs.shm_gates_name());
    REQUIRE(peer);
    {
      auto pass = peer->enter(exposed[1].shm_gate, exposed[1].shm_epoch, ferry::gate_claim::of(exposed[1]));
      REQUIRE(pass);
      auto refused = regs.remove(buf->data());
      REQUIRE_FALSE(refused);
      CHECK(refused.error() == errc::busy);
    }
    CHECK(regs.remove(buf->data()).has_value());
    CHECK_FALSE(peer->enter(exposed[1].shm_gate, exposed[1].shm_epoch, ferry::gate_claim::of(exposed[1])));
  }

  TEST_CASE("a table of gates that others than its owner may write is not attached") {
    auto owner = shm_gates::create();
    REQUIRE(owner);
    int fd = ::shm_open(owner->name().c_str(), O_RDWR | O_CLOEXEC, 0);
    REQUIRE(fd >= 0);
    REQUIRE(::fchmod(fd, 0666) == 0);
    ::close(fd);
    auto peer = shm_gates::attach(owner->name());
    REQUIRE_FALSE(peer);
    CHECK(peer.error() == errc::peer_unreachable);
    CHECK(std::string(peer.error().what()).find("writable by others") != std::string::npos);
  }

  TEST_CASE("a descriptor that describes a shared region otherwise than its owner exposed it gets no pass") {
    // A forged descriptor (copied from the owner's and changed) would send a peer's copies through the
    // owner's open gate into memory the owner did not expose so: it must not.
    ferry::region_registry regs;
    auto buf = ferry::shared_buffer::create(1 << 20);
    REQUIRE(buf);
    auto other = ferry::shared_buffer::create(1 << 20);
    REQUIRE(other);
    REQUIRE(regs.add(buf->data(), buf->size() / 2, access::read, buf->name())); // read-only, half
    const auto genuine = regs.exposed().front();
    auto peer = shm_gates::attach(regs.shm_gates_name());
    REQUIRE(peer);
    auto refused_for = [&](const ferry::region_descriptor& forged) {
      auto pass = peer->enter(forged.shm_gate, forged.shm_epoch, ferry::gate_claim::of(forged));
      return !pass && pass.error() == errc::permission_denied;
    };
    auto forged = genuine;
    forged.permissions = access::read_write; // more access
    CHECK(refused_for(forged));
    forged = genuine;
    forged.length = buf->size(); // more bytes
    CHECK(refused_for(forged));
    forged = genuine;
    forged.shm_offset = buf->size() / 2; // another place in the object
    CHECK(refused_for(forged));
    forged = genuine;
    forged.shm_name = other->name(); // another object
    CHECK(refused_for(forged));
    forged = genuine;
    forged.offset += 4096; // another place in the segment
    CHECK(refused_for(forged));
    auto pass = peer->enter(genuine.shm_gate, genuine.shm_epoch, ferry::gate_claim::of(genuine));
    CHECK(pass.has_value()); // the owner's own description passes
  }
}
