// SIMT emulation layer (simt.hpp): the block scheduler over Boost.Context fibers, the barrier, the
// per-warp exchange and the shared-memory arena.
#include "simt.hpp"

#include <fmt/format.h>
#include <fmt/ranges.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <boost/context/fiber.hpp>
#include <memory>
#include <numeric>
#include <random>
#include <vector>

#if defined(__SANITIZE_ADDRESS__)
#define NB_EMU_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define NB_EMU_ASAN 1
#endif
#endif
#if defined(NB_EMU_ASAN)
#include <sanitizer/asan_interface.h>
#include <sanitizer/common_interface_defs.h>
#endif

namespace nbemu {

namespace {

namespace ctx = boost::context;

#if defined(NB_EMU_ASAN)
constexpr std::size_t kStackBytes = std::size_t{512} << 10;  // ASan frames are several times larger
#else
constexpr std::size_t kStackBytes = std::size_t{128} << 10;
#endif
constexpr std::size_t kSharedCapacity = std::size_t{227} << 10;  // sm_90 opt-in maximum per block
constexpr unsigned kMaxThreads = 1024;

/// Fiber stacks, mapped once with a guard page below each and reused by every block and launch.
/// Under AddressSanitizer a stack on which a fiber ended by an exception is unpoisoned before it
/// is reused: frames left by unwinding keep their redzones in the shadow memory otherwise.
class StackPool {
 public:
  ~StackPool() {
    for (void* p : maps_) munmap(p, kStackBytes + page());
  }
  void* stack(std::size_t i) {
    while (maps_.size() <= i) {
      void* p = mmap(nullptr, kStackBytes + page(), PROT_READ | PROT_WRITE,
                     MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
      if (p == MAP_FAILED) throw Error("SIMT emulator: cannot map a fiber stack");
      mprotect(p, page(), PROT_NONE);  // overflow faults instead of corrupting a neighbour
      maps_.push_back(p);
      dirty_.push_back(false);
    }
    void* base = static_cast<char*>(maps_[i]) + page();
#if defined(NB_EMU_ASAN)
    if (dirty_[i]) ASAN_UNPOISON_MEMORY_REGION(base, kStackBytes);
#endif
    dirty_[i] = false;
    return base;
  }
  void mark_dirty(std::size_t i) { dirty_[i] = true; }

 private:
  static std::size_t page() { return static_cast<std::size_t>(sysconf(_SC_PAGESIZE)); }
  std::vector<void*> maps_;
  std::vector<bool> dirty_;
};

// AddressSanitizer must know which stack is running, or an exception thrown on a fiber stack
// (__asan_handle_no_return) cannot clean up the frames it unwinds, and leaves redzones that a
// later fiber on the same stack trips over (a false stack-buffer-overflow). Every switch between
// the scheduler and a fiber is announced: start_switch just before, finish_switch just after.
// fake: ASan's fake stack of the stack being left (nullptr when a fiber leaves for good).
void start_switch([[maybe_unused]] void** fake, [[maybe_unused]] const void* bottom,
                  [[maybe_unused]] std::size_t size) {
#if defined(NB_EMU_ASAN)
  __sanitizer_start_switch_fiber(fake, bottom, size);
#endif
}
void finish_switch([[maybe_unused]] void* fake, [[maybe_unused]] const void** old_bottom,
                   [[maybe_unused]] std::size_t* old_size) {
#if defined(NB_EMU_ASAN)
  __sanitizer_finish_switch_fiber(fake, old_bottom, old_size);
#endif
}

/// Thrown at a suspension point of a fiber whose block failed, so that the fiber unwinds on its
/// own stack and returns normally (not derived from std::exception: kernel code never sees it).
struct Aborted {};

struct PoolStackAllocator {
  void* base;
  ctx::stack_context allocate() {
    ctx::stack_context sc;
    sc.size = kStackBytes;
    sc.sp = static_cast<char*>(base) + kStackBytes;
    return sc;
  }
  void deallocate(ctx::stack_context&) noexcept {}
};

enum class State { runnable, at_barrier, at_warp, done };
enum class WarpOp { shfl_idx, shfl_xor, shfl_down, shfl_up, ballot, syncwarp };

const char* op_name(WarpOp op) {
  switch (op) {
    case WarpOp::shfl_idx:
      return "__shfl_sync";
    case WarpOp::shfl_xor:
      return "__shfl_xor_sync";
    case WarpOp::shfl_down:
      return "__shfl_down_sync";
    case WarpOp::shfl_up:
      return "__shfl_up_sync";
    case WarpOp::ballot:
      return "__ballot_sync";
    case WarpOp::syncwarp:
      return "__syncwarp";
  }
  return "?";
}

struct EmuThread {
  ctx::fiber fiber;       // the CUDA thread
  ctx::fiber sched;       // the scheduler, while this thread runs
  void* stack = nullptr;  // lowest address of the fiber's stack (kStackBytes)
  bool threw = false;     // the fiber ended by an exception (its stack is dirty under ASan)
  ThreadView view;
  unsigned linear = 0, warp = 0, lane = 0;
  State state = State::runnable;
  const char* file = "";
  int line = 0;
  // Warp exchange in flight.
  WarpOp op = WarpOp::syncwarp;
  unsigned mask = 0;
  std::uint64_t in = 0, out = 0;
  int param = 0, width = 32;
};

struct PendingExchange {
  unsigned mask;
  WarpOp op;
  unsigned arrived;
  const char* file;
  int line;
};

struct Runtime {
  const char* kernel = "";
  const std::function<void()>* body = nullptr;
  BlockView block;
  std::vector<EmuThread> threads;
  unsigned nthreads = 0;
  EmuThread* current = nullptr;
  // Block barrier.
  unsigned waiting = 0;
  const char* barrier_file = "";
  int barrier_line = 0;
  unsigned exited = 0;
  int first_exited = -1;
  // Per warp: exchanges in flight, lanes that exist, lanes that exited.
  std::vector<std::vector<PendingExchange>> pending;
  std::vector<unsigned> warp_exited;
  // Shared memory.
  std::unique_ptr<uint4[]> arena{new uint4[kSharedCapacity / 16 + 1]};
  std::size_t dynamic_bytes = 0, static_top = 0;
  std::vector<std::pair<const void*, std::pair<std::size_t, std::size_t>>> statics;
  // First error of the block.
  bool failed = false;
  bool aborting = false;  // waking suspended fibers of a failed block so that they finish
  // The scheduler's stack, as ASan reports it when a fiber is first entered.
  const void* sched_bottom = nullptr;
  std::size_t sched_size = 0;
  std::string error;
  int error_thread = -1;
};

Runtime* g_rt = nullptr;
Schedule g_schedule;
std::uint64_t g_launches = 0;
StackPool* g_stacks = nullptr;
std::atomic<bool> g_launch_running{false};

std::string where(const char* file, int line) {
  std::string f = file;
  const auto slash = f.find_last_of('/');
  if (slash != std::string::npos) f = f.substr(slash + 1);
  return fmt::format("{}:{}", f, line);
}

std::string idx3(uint3 v) { return fmt::format("({},{},{})", v.x, v.y, v.z); }

unsigned warp_lanes(const Runtime& rt, unsigned warp) {
  const unsigned n = std::min(32u, rt.nthreads - 32 * warp);
  return n == 32 ? 0xffffffffu : ((1u << n) - 1);
}

Runtime& runtime(const char* what) {
  if (!g_rt || !g_rt->current)
    throw Error(fmt::format("{} called outside an emulated kernel launch", what));
  return *g_rt;
}

/// Suspends the running fiber (back to the scheduler) until it is resumed. Throws Aborted when it
/// is resumed only to finish because its block failed.
void yield(EmuThread& t) {
  Runtime& rt = *g_rt;
  void* fake = nullptr;
  start_switch(&fake, rt.sched_bottom, rt.sched_size);
  t.sched = std::move(t.sched).resume();
  finish_switch(fake, nullptr, nullptr);
  if (rt.aborting) throw Aborted{};
}

/// Runs fiber t until it suspends or finishes (scheduler side).
void resume(EmuThread& t) {
  void* fake = nullptr;
  start_switch(&fake, t.stack, kStackBytes);
  t.fiber = std::move(t.fiber).resume();
  finish_switch(fake, nullptr, nullptr);
}

void record_error(Runtime& rt, const EmuThread& t, const std::string& what) {
  if (rt.failed) return;
  rt.failed = true;
  rt.error = what;
  rt.error_thread = static_cast<int>(t.linear);
}

std::string lanes_of(unsigned bits) {
  std::vector<int> lanes;
  for (int i = 0; i < 32; ++i)
    if (bits >> i & 1u) lanes.push_back(i);
  return fmt::format("{}", fmt::join(lanes, ","));
}

/// Checks made when thread t has just returned from the kernel.
void on_exit(Runtime& rt, EmuThread& t) {
  ++rt.exited;
  if (rt.first_exited < 0) rt.first_exited = static_cast<int>(t.linear);
  rt.warp_exited[t.warp] |= 1u << t.lane;
  if (rt.waiting > 0)
    record_error(rt, t,
                 fmt::format("thread exited while {} thread(s) wait at __syncthreads at {} "
                             "(a barrier some threads never reach)",
                             rt.waiting, where(rt.barrier_file, rt.barrier_line)));
  for (const auto& p : rt.pending[t.warp])
    if (p.mask >> t.lane & 1u)
      record_error(
          rt, t,
          fmt::format("lane {} exited while lanes {} wait for it in {} at {} (mask {:#010x})",
                      t.lane, lanes_of(p.arrived), op_name(p.op), where(p.file, p.line), p.mask));
}

std::string deadlock_message(const Runtime& rt) {
  std::string msg = "deadlock: no thread can proceed;";
  if (rt.waiting)
    msg += fmt::format(" {} thread(s) wait at __syncthreads at {} (of {});", rt.waiting,
                       where(rt.barrier_file, rt.barrier_line), rt.nthreads);
  for (std::size_t w = 0; w < rt.pending.size(); ++w)
    for (const auto& p : rt.pending[w])
      msg += fmt::format(" warp {} lanes {} wait in {} at {} for lanes {};", w, lanes_of(p.arrived),
                         op_name(p.op), where(p.file, p.line), lanes_of(p.mask & ~p.arrived));
  return msg;
}

/// Runs one block to completion; returns normally or with rt.failed set.
void run_block(Runtime& rt, StackPool& stacks) {
  rt.waiting = 0;
  rt.exited = 0;
  rt.first_exited = -1;
  for (auto& p : rt.pending) p.clear();
  std::fill(rt.warp_exited.begin(), rt.warp_exited.end(), 0u);
  std::memset(rt.arena.get(), 0xff, rt.dynamic_bytes + rt.static_top + 16);

  const dim3 bd = rt.block.block_dim;
  for (unsigned i = 0; i < rt.nthreads; ++i) {
    EmuThread& t = rt.threads[i];
    t.view.thread_idx = {i % bd.x, (i / bd.x) % bd.y, i / (bd.x * bd.y)};
    t.linear = i;
    t.warp = i / 32;
    t.lane = i % 32;
    t.state = State::runnable;
    t.threw = false;
    t.stack = stacks.stack(i);
    t.fiber = ctx::fiber(std::allocator_arg, PoolStackAllocator{t.stack},
                         [&rt, &t](ctx::fiber&& sched) -> ctx::fiber {
                           finish_switch(nullptr, &rt.sched_bottom, &rt.sched_size);
                           t.sched = std::move(sched);
                           // Every exception ends here, on the fiber's own stack: none crosses
                           // a switch, and the fiber always returns normally (Boost's forced
                           // unwinding of suspended fibers is never used).
                           if (!rt.aborting) {
                             try {
                               (*rt.body)();
                             } catch (const Aborted&) {
                               t.threw = true;
                             } catch (const std::exception& e) {
                               t.threw = true;
                               record_error(rt, t, e.what());
                             } catch (...) {
                               t.threw = true;
                               record_error(rt, t, "unknown exception");
                             }
                           }
                           t.state = State::done;
                           start_switch(nullptr, rt.sched_bottom, rt.sched_size);
                           return std::move(t.sched);
                         });
  }

  std::vector<unsigned> order(rt.nthreads);
  std::iota(order.begin(), order.end(), 0u);
  if (g_schedule.order == Order::reverse) std::reverse(order.begin(), order.end());
  std::mt19937_64 rng(g_schedule.seed * 0x9e3779b97f4a7c15ull + g_launches * 131 +
                      rt.block.block_idx.x + 7919ull * rt.block.block_idx.y);
  unsigned alive = rt.nthreads;
  while (alive > 0 && !rt.failed) {
    if (g_schedule.order == Order::random) std::shuffle(order.begin(), order.end(), rng);
    bool progressed = false;
    for (unsigned i : order) {
      EmuThread& t = rt.threads[i];
      if (t.state != State::runnable) continue;
      progressed = true;
      rt.current = &t;
      g_thread = &t.view;
      resume(t);
      rt.current = nullptr;
      g_thread = nullptr;
      if (t.state == State::done) {
        --alive;
        on_exit(rt, t);
      }
      if (rt.failed) break;
    }
    if (!progressed && !rt.failed) {
      for (auto& t : rt.threads)
        if (t.state != State::done) {
          record_error(rt, t, deadlock_message(rt));
          break;
        }
    }
  }
  if (rt.failed) {
    // Threads still suspended (or never started) are resumed once more: each throws Aborted at
    // its suspension point (or does not start), unwinds its own stack and finishes.
    rt.aborting = true;
    for (auto& t : rt.threads)
      if (t.state != State::done) {
        rt.current = &t;
        g_thread = &t.view;
        resume(t);
        rt.current = nullptr;
        g_thread = nullptr;
      }
    rt.aborting = false;
  }
  for (unsigned i = 0; i < rt.nthreads; ++i)
    if (rt.threads[i].threw) stacks.mark_dirty(i);
}

}  // namespace

void set_schedule(Schedule s) { g_schedule = s; }
Schedule schedule() { return g_schedule; }
std::uint64_t launches_run() { return g_launches; }

void launch(const char* kernel_name, dim3 grid, dim3 block, std::size_t dynamic_shared_bytes,
            const std::function<void()>& body) {
  const std::uint64_t nthreads = std::uint64_t{block.x} * block.y * block.z;
  if (nthreads == 0 || nthreads > kMaxThreads || block.z > 64)
    throw Error(fmt::format("kernel {}: invalid block ({},{},{}) (1..1024 threads, z <= 64)",
                            kernel_name, block.x, block.y, block.z));
  if (grid.x == 0 || grid.y == 0 || grid.z == 0 || grid.y > 65535 || grid.z > 65535)
    throw Error(
        fmt::format("kernel {}: invalid grid ({},{},{})", kernel_name, grid.x, grid.y, grid.z));
  if (dynamic_shared_bytes > kSharedCapacity)
    throw Error(fmt::format("kernel {}: {} bytes of dynamic shared memory exceed the {} per block",
                            kernel_name, dynamic_shared_bytes, kSharedCapacity));
  if (g_launch_running.exchange(true))
    throw Error(fmt::format("kernel {}: launched while another emulated launch runs", kernel_name));
  struct Release {
    ~Release() { g_launch_running = false; }
  } release;
  if (!g_stacks) g_stacks = new StackPool();  // kept for the life of the process

  Runtime rt;
  rt.kernel = kernel_name;
  rt.body = &body;
  rt.nthreads = static_cast<unsigned>(nthreads);
  rt.threads.resize(nthreads);
  rt.pending.resize((nthreads + 31) / 32);
  rt.warp_exited.resize(rt.pending.size());
  rt.dynamic_bytes = (dynamic_shared_bytes + 15) / 16 * 16;
  rt.block.block_dim = block;
  rt.block.grid_dim = grid;

  const std::uint64_t nblocks = std::uint64_t{grid.x} * grid.y * grid.z;
  std::vector<std::uint64_t> blocks(nblocks);
  std::iota(blocks.begin(), blocks.end(), std::uint64_t{0});
  if (g_schedule.order == Order::reverse) std::reverse(blocks.begin(), blocks.end());
  if (g_schedule.order == Order::random) {
    std::mt19937_64 rng(g_schedule.seed + g_launches);
    std::shuffle(blocks.begin(), blocks.end(), rng);
  }

  struct Reset {
    ~Reset() {
      g_rt = nullptr;
      g_thread = nullptr;
      g_block = nullptr;
      ++g_launches;
    }
  } reset;
  g_rt = &rt;
  g_block = &rt.block;
  for (std::uint64_t b : blocks) {
    rt.block.block_idx = {static_cast<unsigned>(b % grid.x),
                          static_cast<unsigned>(b / grid.x % grid.y),
                          static_cast<unsigned>(b / grid.x / grid.y)};
    run_block(rt, *g_stacks);
    if (rt.failed) {
      const EmuThread& t = rt.threads[static_cast<std::size_t>(rt.error_thread)];
      throw Error(fmt::format("kernel {}: block {} thread {}: {}", kernel_name,
                              idx3(rt.block.block_idx), idx3(t.view.thread_idx), rt.error));
    }
  }
}

void syncthreads(const char* file, int line) {
  Runtime& rt = runtime("__syncthreads");
  EmuThread& t = *rt.current;
  if (rt.exited > 0)
    throw Error(fmt::format(
        "__syncthreads at {} reached after {} thread(s) of the block exited (first: thread {}): "
        "a barrier some threads never reach",
        where(file, line), rt.exited,
        idx3(rt.threads[static_cast<std::size_t>(rt.first_exited)].view.thread_idx)));
  if (rt.waiting > 0 && (rt.barrier_line != line || std::strcmp(rt.barrier_file, file) != 0))
    throw Error(
        fmt::format("__syncthreads at {} while {} thread(s) wait at __syncthreads at {} "
                    "(threads at different barriers: a barrier in divergent code)",
                    where(file, line), rt.waiting, where(rt.barrier_file, rt.barrier_line)));
  if (rt.waiting == 0) {
    rt.barrier_file = file;
    rt.barrier_line = line;
  }
  ++rt.waiting;
  t.state = State::at_barrier;
  t.file = file;
  t.line = line;
  if (rt.waiting == rt.nthreads) {
    for (auto& o : rt.threads)
      if (o.state == State::at_barrier) o.state = State::runnable;
    rt.waiting = 0;
  }
  yield(t);
}

namespace {

std::uint64_t warp_exchange(WarpOp op, unsigned mask, std::uint64_t bits, int param, int width,
                            const char* file, int line) {
  Runtime& rt = runtime(op_name(op));
  EmuThread& t = *rt.current;
  const unsigned me = 1u << t.lane;
  if (!(mask & me))
    throw Error(fmt::format("{} at {}: calling lane {} is not in mask {:#010x}", op_name(op),
                            where(file, line), t.lane, mask));
  const unsigned exists = warp_lanes(rt, t.warp);
  if (mask & ~exists)
    throw Error(
        fmt::format("{} at {}: mask {:#010x} names lanes {} that do not exist (the block "
                    "has {} threads)",
                    op_name(op), where(file, line), mask, lanes_of(mask & ~exists), rt.nthreads));
  if (mask & rt.warp_exited[t.warp])
    throw Error(fmt::format("{} at {}: mask {:#010x} names lanes {} that have exited", op_name(op),
                            where(file, line), mask, lanes_of(mask & rt.warp_exited[t.warp])));
  if (width < 1 || width > 32 || (width & (width - 1)))
    throw Error(fmt::format("{} at {}: width {} is not a power of two <= 32", op_name(op),
                            where(file, line), width));
  auto& pend = rt.pending[t.warp];
  auto it = std::find_if(pend.begin(), pend.end(),
                         [&](const PendingExchange& p) { return (p.mask & mask) != 0; });
  if (it != pend.end() && it->mask != mask)
    throw Error(
        fmt::format("{} at {}: lane {} uses mask {:#010x} while lanes {} wait in {} at {} "
                    "with mask {:#010x}",
                    op_name(op), where(file, line), t.lane, mask, lanes_of(it->arrived),
                    op_name(it->op), where(it->file, it->line), it->mask));
  if (it != pend.end() && it->op != op)
    throw Error(fmt::format("{} at {}: lane {} meets lanes {} waiting in {} at {} (mask {:#010x})",
                            op_name(op), where(file, line), t.lane, lanes_of(it->arrived),
                            op_name(it->op), where(it->file, it->line), mask));
  if (it == pend.end()) {
    pend.push_back({mask, op, 0u, file, line});
    it = pend.end() - 1;
  }
  it->arrived |= me;
  t.state = State::at_warp;
  t.op = op;
  t.mask = mask;
  t.in = bits;
  t.param = param;
  t.width = width;
  t.file = file;
  t.line = line;
  if (it->arrived == mask) {
    EmuThread* lanes = &rt.threads[32 * t.warp];
    unsigned ballot_bits = 0;
    for (int l = 0; l < 32; ++l)
      if ((mask >> l & 1u) && lanes[l].in) ballot_bits |= 1u << l;
    for (int l = 0; l < 32; ++l) {
      if (!(mask >> l & 1u)) continue;
      EmuThread& o = lanes[l];
      const int w = o.width, seg = l & ~(w - 1);
      int src = l;
      switch (op) {
        case WarpOp::shfl_idx:
          src = seg + (o.param & (w - 1));
          break;
        case WarpOp::shfl_xor:
          src = l ^ o.param;
          if (src < seg || src >= seg + w) src = l;
          break;
        case WarpOp::shfl_down:
          src = l + o.param;
          if (src >= seg + w) src = l;
          break;
        case WarpOp::shfl_up:
          src = l - o.param;
          if (src < seg) src = l;
          break;
        case WarpOp::ballot:
        case WarpOp::syncwarp:
          break;
      }
      if (src < 0 || src > 31 || !(mask >> src & 1u))
        throw Error(fmt::format("{} at {}: lane {} reads lane {}, which is not in mask {:#010x}",
                                op_name(op), where(file, line), l, src, mask));
      o.out = op == WarpOp::ballot ? ballot_bits : lanes[src].in;
      o.state = State::runnable;
    }
    pend.erase(it);
  }
  yield(t);
  return t.out;
}

WarpOp to_op(ShuffleKind k) {
  switch (k) {
    case ShuffleKind::idx:
      return WarpOp::shfl_idx;
    case ShuffleKind::xor_:
      return WarpOp::shfl_xor;
    case ShuffleKind::down:
      return WarpOp::shfl_down;
    case ShuffleKind::up:
      return WarpOp::shfl_up;
  }
  return WarpOp::shfl_idx;
}

}  // namespace

void syncwarp(unsigned mask, const char* file, int line) {
  warp_exchange(WarpOp::syncwarp, mask, 0, 0, 32, file, line);
}

std::uint64_t shuffle(ShuffleKind kind, unsigned mask, std::uint64_t bits, int param, int width,
                      const char* file, int line) {
  return warp_exchange(to_op(kind), mask, bits, param, width, file, line);
}

unsigned ballot(unsigned mask, bool predicate, const char* file, int line) {
  return static_cast<unsigned>(
      warp_exchange(WarpOp::ballot, mask, predicate ? 1 : 0, 0, 32, file, line));
}

void* shared_static(const void* site, std::size_t bytes) {
  Runtime& rt = runtime("shared memory");
  for (const auto& [s, off_size] : rt.statics)
    if (s == site) {
      if (off_size.second != bytes) throw Error("a __shared__ array changed size within a launch");
      return reinterpret_cast<unsigned char*>(rt.arena.get()) + off_size.first;
    }
  const std::size_t offset = rt.dynamic_bytes + rt.static_top;
  const std::size_t size = (bytes + 15) / 16 * 16;
  if (offset + size > kSharedCapacity)
    throw Error(fmt::format("shared memory of the block exceeds {} bytes", kSharedCapacity));
  rt.static_top += size;
  rt.statics.push_back({site, {offset, bytes}});
  auto* p = reinterpret_cast<unsigned char*>(rt.arena.get()) + offset;
  std::memset(p, 0xff, size);
  return p;
}

void* shared_dynamic() { return runtime("dynamic shared memory").arena.get(); }

void fail(const std::string& what) { throw Error(what); }

}  // namespace nbemu
