// Implementation of dist.h over PyTorch's c10d. Only c10d's public C++ API is used: the store,
// the process group and its backends, c10d::broadcast_coalesced and DDP's c10d::Reducer. No gloo
// or NCCL type is touched here: gloo's headers (needed by ProcessGroupGloo.hpp) may come from a
// different gloo version than the one built into libtorch, so this file only calls functions
// defined inside libtorch (ProcessGroupGloo's constructor and Options::create_default) and the
// virtual interface of c10d::ProcessGroup.
#include "dist.h"

#ifndef TRAIN_DIST_STUB

#include <algorithm>
#include <atomic>
#include <cctype>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <exception>
#include <memory>
#include <string>
#include <tuple>
#include <vector>

#include <c10/util/Exception.h>
#include <torch/csrc/distributed/c10d/PrefixStore.hpp>
#include <torch/csrc/distributed/c10d/ProcessGroup.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>
#include <torch/csrc/distributed/c10d/comm.hpp>
#include <torch/csrc/distributed/c10d/reducer.hpp>
#include <torch/csrc/utils/tensor_flatten.h>
#include <torch/csrc/autograd/autograd.h>
#include <torch/csrc/autograd/custom_function.h>
#include <ATen/ATen.h>
#include <ATen/core/grad_mode.h>

#ifdef USE_C10D_GLOO
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#endif
#ifdef USE_C10D_NCCL
#include <c10/core/impl/DeviceGuardImplInterface.h>
#include <torch/csrc/distributed/c10d/ProcessGroupNCCL.hpp>
#include <torch/cuda.h>
#endif

struct dist_pg {
    c10::intrusive_ptr<c10d::ProcessGroup> pg;
    // Where collectives run: CPU for gloo, the rank's GPU for NCCL.
    c10::Device device{c10::kCPU};
    std::chrono::milliseconds timeout{0};
    // Time synchronised batch norm spent in its all-reduces (forward and backward).
    std::atomic<int64_t> sync_bn_ns{0};
};

// The reducer's clock (see dist_reducer_timings); the hook's completion callbacks run on the
// backend's threads, hence the atomics.
struct ReducerClock {
    std::atomic<int64_t> allreduces{0};
    std::atomic<int64_t> allreduce_ns{0};
    // Steady-clock time of the latest launch.
    std::atomic<int64_t> last_launch_ns{0};
    int64_t backward_passes = 0;
    int64_t backward_ns = 0;
    int64_t exposed_ns = 0;
};

struct dist_reducer {
    std::shared_ptr<c10d::Reducer> reducer;
    std::shared_ptr<ReducerClock> clock;
};

namespace {

// A failure detected here, before anything was sent.
struct Invalid : std::runtime_error {
    using std::runtime_error::runtime_error;
};
struct Unavailable : std::runtime_error {
    using std::runtime_error::runtime_error;
};

std::string lower(std::string s) {
    std::transform(s.begin(), s.end(), s.begin(),
                   [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
    return s;
}

// One line: libtorch's messages may span several (and carry a C++ backtrace when
// TORCH_SHOW_CPP_STACKTRACES=1); keep the text, join the lines.
std::string one_line(std::string s) {
    while (!s.empty() && (s.back() == '\n' || s.back() == ' ')) s.pop_back();
    std::string out;
    out.reserve(s.size());
    for (char c : s) {
        if (c == '\n') {
            if (!out.empty() && out.back() != ' ') out += "; ";
        } else {
            out += c;
        }
    }
    return out;
}

bool mentions_timeout(const std::string& msg) {
    auto m = lower(msg);
    return m.find("timed out") != std::string::npos || m.find("timeout") != std::string::npos;
}

void set_err(char** err, const std::string& msg) {
    if (err == nullptr) return;
    *err = static_cast<char*>(std::malloc(msg.size() + 1));
    if (*err != nullptr) std::memcpy(*err, msg.c_str(), msg.size() + 1);
}

// Runs `f`, turning every exception into a status and a message.
template <typename F>
dist_status guarded(char** err, F&& f) {
    if (err != nullptr) *err = nullptr;
    try {
        f();
        return DIST_OK;
    } catch (const Invalid& e) {
        set_err(err, e.what());
        return DIST_ERR_INVALID;
    } catch (const Unavailable& e) {
        set_err(err, e.what());
        return DIST_ERR_UNAVAILABLE;
    } catch (const c10::DistStoreError& e) {
        auto msg = one_line(e.what_without_backtrace());
        set_err(err, msg);
        return mentions_timeout(msg) ? DIST_ERR_TIMEOUT : DIST_ERR_STORE;
    } catch (const c10::DistNetworkError& e) {
        auto msg = one_line(e.what_without_backtrace());
        set_err(err, msg);
        return mentions_timeout(msg) ? DIST_ERR_TIMEOUT : DIST_ERR_STORE;
    } catch (const c10::DistError& e) {
        auto msg = one_line(e.what_without_backtrace());
        set_err(err, msg);
        return mentions_timeout(msg) ? DIST_ERR_TIMEOUT : DIST_ERR_COLLECTIVE;
    } catch (const c10::Error& e) {
        auto msg = one_line(e.what_without_backtrace());
        set_err(err, msg);
        return mentions_timeout(msg) ? DIST_ERR_TIMEOUT : DIST_ERR_INTERNAL;
    } catch (const std::exception& e) {
        // gloo's own exceptions (gloo::IoException: "Connection closed by peer", "Timed out
        // waiting ...") reach us as std::runtime_error through Work::wait.
        auto msg = one_line(e.what());
        set_err(err, msg);
        return mentions_timeout(msg) ? DIST_ERR_TIMEOUT : DIST_ERR_COLLECTIVE;
    } catch (...) {
        set_err(err, "unknown C++ exception");
        return DIST_ERR_INTERNAL;
    }
}

void check_pg(const dist_pg* pg) {
    if (pg == nullptr || !pg->pg) throw Invalid("null process group");
}

std::vector<at::Tensor> borrow(const dist_tensor* tensors, size_t n, const char* what) {
    if (n > 0 && tensors == nullptr) throw Invalid(std::string("null ") + what + " array");
    std::vector<at::Tensor> out;
    out.reserve(n);
    for (size_t i = 0; i < n; ++i) {
        auto* t = static_cast<const at::Tensor*>(tensors[i]);
        if (t == nullptr || !t->defined()) {
            throw Invalid(std::string(what) + " " + std::to_string(i) + " is undefined");
        }
        out.push_back(*t);
    }
    return out;
}

void check_on_device(const std::vector<at::Tensor>& ts, const dist_pg* pg, const char* op) {
    for (size_t i = 0; i < ts.size(); ++i) {
        if (ts[i].device() != pg->device) {
            throw Invalid(std::string(op) + ": tensor " + std::to_string(i) + " is on " +
                          ts[i].device().str() + ", the process group's backend needs " +
                          pg->device.str());
        }
        if (ts[i].is_sparse()) {
            throw Invalid(std::string(op) + ": tensor " + std::to_string(i) + " is sparse");
        }
    }
}

void wait(const c10::intrusive_ptr<c10d::Work>& work, const dist_pg* pg) {
    // The backend applies its own timeout to the operation; this one bounds the wait itself,
    // a little later, so that the backend's (more precise) message wins when both fire.
    work->wait(pg->timeout + std::chrono::milliseconds(500));
}

c10::intrusive_ptr<c10d::Store> make_store(const std::string& addr, int port, bool host,
                                           int world_size, std::chrono::milliseconds timeout,
                                           const char* prefix) {
    if (port <= 0 || port > 65535) throw Invalid("master port " + std::to_string(port) + " is out of range");
    c10d::TCPStoreOptions opts;
    opts.port = static_cast<std::uint16_t>(port);
    opts.isServer = host;
    opts.numWorkers = static_cast<std::size_t>(world_size);
    opts.waitWorkers = true;
    opts.timeout = timeout;
    opts.multiTenant = true;
    c10::intrusive_ptr<c10d::Store> store = c10::make_intrusive<c10d::TCPStore>(addr, opts);
    if (prefix != nullptr && prefix[0] != '\0') {
        store = c10::make_intrusive<c10d::PrefixStore>(prefix, store);
    }
    return store;
}


int64_t now_ns() {
    return std::chrono::duration_cast<std::chrono::nanoseconds>(
               std::chrono::steady_clock::now().time_since_epoch())
        .count();
}

// DDP's default gradient communication (c10d's AllReduceCommHook: divide by the world size,
// all-reduce the bucket's sum), timed: each all-reduce from launch to completion.
class TimedAllreduceHook : public c10d::CppCommHookInterface<c10::intrusive_ptr<c10d::ProcessGroup>> {
   public:
    TimedAllreduceHook(c10::intrusive_ptr<c10d::ProcessGroup> pg, std::shared_ptr<ReducerClock> clock)
        : c10d::CppCommHookInterface<c10::intrusive_ptr<c10d::ProcessGroup>>(std::move(pg)),
          clock_(std::move(clock)) {}

    c10::intrusive_ptr<c10::ivalue::Future> runHook(c10d::GradBucket& bucket) override {
        std::vector<at::Tensor> tensors = {bucket.getBufferRef()};
        // Divided before the sum, as DDP does, so that float16 gradients do not overflow.
        tensors[0].div_(state_->getSize());
        const int64_t launched = now_ns();
        clock_->last_launch_ns.store(launched);
        clock_->allreduces.fetch_add(1);
        auto future = state_->allreduce(tensors)->getFuture();
        auto clock = clock_;
        future->addCallback(
            [clock, launched](c10::ivalue::Future&) { clock->allreduce_ns.fetch_add(now_ns() - launched); });
        return future;
    }

   private:
    std::shared_ptr<ReducerClock> clock_;
};

// Sums `t` (contiguous, on the group's device) over the ranks, in place, waits, and counts the
// time as synchronised batch norm's.
void allreduce_sum_now(dist_pg* pg, at::Tensor& t) {
    const int64_t started = now_ns();
    std::vector<at::Tensor> one{t};
    c10d::AllreduceOptions opts;
    opts.reduceOp = c10d::ReduceOp::SUM;
    wait(pg->pg->allreduce(one, opts), pg);
    pg->sync_bn_ns.fetch_add(now_ns() - started);
}

// Dimensions reduced by batch norm: all but the channels (dim 1).
std::vector<int64_t> reduced_dims(const at::Tensor& x) {
    std::vector<int64_t> dims{0};
    for (int64_t d = 2; d < x.dim(); ++d) dims.push_back(d);
    return dims;
}

// [1, C, 1, ...] for broadcasting per-channel values against `x`.
std::vector<int64_t> channel_shape(const at::Tensor& x) {
    std::vector<int64_t> shape(static_cast<size_t>(x.dim()), 1);
    shape[1] = x.size(1);
    return shape;
}

// torch.nn.SyncBatchNorm's autograd function (torch/nn/modules/_functions.py), in plain ATen
// operations so that it runs on the CPU too (PyTorch's fused kernels are CUDA-only).
struct SyncBatchNormFn : public torch::autograd::Function<SyncBatchNormFn> {
    static torch::autograd::variable_list forward(torch::autograd::AutogradContext* ctx, const at::Tensor& input,
                                                  const at::Tensor& weight, const at::Tensor& bias,
                                                  const std::optional<at::Tensor>& running_mean,
                                                  const std::optional<at::Tensor>& running_var, double momentum,
                                                  double eps, int64_t pg_handle) {
        auto* pg = reinterpret_cast<dist_pg*>(pg_handle);
        const int64_t c = input.size(1);
        const auto dims = reduced_dims(input);
        // Sum, sum of squares (accumulated in double: E[x²] - E[x]² cancels) and count.
        auto stats = at::empty({2 * c + 1}, input.options().dtype(at::kDouble));
        stats.narrow(0, 0, c).copy_(at::sum(input, dims, false, at::kDouble));
        stats.narrow(0, c, c).copy_(at::sum(input.square(), dims, false, at::kDouble));
        stats.narrow(0, 2 * c, 1).fill_(static_cast<double>(input.numel() / std::max<int64_t>(c, 1)));
        allreduce_sum_now(pg, stats);
        const double count = stats.narrow(0, 2 * c, 1).item<double>();
        if (count < 2) {
            throw Invalid("sync batch norm: " + std::to_string(static_cast<int64_t>(count)) +
                          " value(s) per channel across all ranks; training needs more than 1");
        }
        auto mean = stats.narrow(0, 0, c) / count;
        auto var = (stats.narrow(0, c, c) / count - mean.square()).clamp_min(0);
        if (running_mean.has_value() && running_mean->defined()) {
            running_mean->mul_(1 - momentum).add_(mean.to(running_mean->scalar_type()), momentum);
        }
        if (running_var.has_value() && running_var->defined()) {
            auto unbiased = var * (count / (count - 1));
            running_var->mul_(1 - momentum).add_(unbiased.to(running_var->scalar_type()), momentum);
        }
        const auto kind = weight.scalar_type();
        auto invstd = (var + eps).rsqrt().to(kind);
        auto mean_k = mean.to(kind);
        const auto shape = channel_shape(input);
        auto scale = invstd * weight;
        auto shift = bias - mean_k * scale;
        auto out = (input * scale.view(shape) + shift.view(shape)).to(input.scalar_type());
        ctx->save_for_backward({input, weight, mean_k, invstd});
        ctx->saved_data["pg"] = pg_handle;
        ctx->saved_data["count"] = count;
        return {out};
    }

    static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                   torch::autograd::variable_list grads) {
        // Every rank's output reaches the loss the same way, so all skip the all-reduce together.
        if (!grads[0].defined()) return torch::autograd::variable_list(8);
        auto saved = ctx->get_saved_variables();
        const auto& input = saved[0];
        const auto& weight = saved[1];
        const auto& mean = saved[2];
        const auto& invstd = saved[3];
        auto* pg = reinterpret_cast<dist_pg*>(ctx->saved_data["pg"].toInt());
        const double count = ctx->saved_data["count"].toDouble();
        const auto shape = channel_shape(input);
        const auto dims = reduced_dims(input);
        const int64_t c = input.size(1);
        auto dy = grads[0].to(invstd.scalar_type());
        auto xmu = input.to(invstd.scalar_type()) - mean.view(shape);
        // This rank's sums over its batch: the weight's and bias's gradients (which DDP's
        // reducer averages over the ranks, like every parameter's) and, reduced over all
        // ranks, the input's.
        auto sum_dy = at::sum(dy, dims, false, at::kDouble);
        auto sum_dy_xmu = at::sum(dy * xmu, dims, false, at::kDouble);
        at::Tensor grad_input, grad_weight, grad_bias;
        if (ctx->needs_input_grad(1)) grad_weight = sum_dy_xmu.to(invstd.scalar_type()) * invstd;
        if (ctx->needs_input_grad(2)) grad_bias = sum_dy.to(invstd.scalar_type());
        if (ctx->needs_input_grad(0)) {
            auto both = at::cat({sum_dy, sum_dy_xmu});
            allreduce_sum_now(pg, both);
            auto mean_dy = (both.narrow(0, 0, c) / count).to(invstd.scalar_type());
            auto mean_dy_xmu = (both.narrow(0, c, c) / count).to(invstd.scalar_type());
            auto scale = invstd * weight;
            grad_input = ((dy - mean_dy.view(shape) - xmu * (invstd.square() * mean_dy_xmu).view(shape)) *
                          scale.view(shape))
                             .to(input.scalar_type());
        }
        // One entry per argument of forward: input, weight, bias, running_mean, running_var,
        // momentum, eps, pg_handle.
        return {grad_input, grad_weight, grad_bias, at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor(),
                at::Tensor()};
    }
};

// The first line of a message.
std::string first_line(const std::string& s) {
    auto end = s.find('\n');
    return end == std::string::npos ? s : s.substr(0, end);
}

}  // namespace

extern "C" {

void dist_free_string(char* s) { std::free(s); }

int dist_backend_available(const char* backend) {
    if (backend == nullptr) return 0;
    std::string b(backend);
#ifdef USE_C10D_GLOO
    if (b == "gloo") return 1;
#endif
#ifdef USE_C10D_NCCL
    if (b == "nccl") return 1;
#endif
    return 0;
}

dist_status dist_pg_create(const char* backend, int rank, int world_size, const char* master_addr,
                           int port, int host_store, const char* store_prefix, int64_t timeout_ms,
                           int device_index, dist_pg** out, char** err) {
    return guarded(err, [&] {
        if (out == nullptr) throw Invalid("null output handle");
        *out = nullptr;
        if (backend == nullptr || master_addr == nullptr) throw Invalid("null backend or address");
        if (world_size < 1) throw Invalid("world size must be at least 1, got " + std::to_string(world_size));
        if (rank < 0 || rank >= world_size) {
            throw Invalid("rank " + std::to_string(rank) + " is not in [0, " + std::to_string(world_size) + ")");
        }
        if (timeout_ms <= 0) throw Invalid("timeout must be positive");
        std::string name(backend);
        if (name != "gloo" && name != "nccl") throw Invalid("unknown backend '" + name + "' (gloo or nccl)");
        if (!dist_backend_available(backend)) {
            throw Unavailable("backend " + name +
                              " was not compiled into this build (its headers were missing when "
                              "train was built; see scripts/setup.sh)");
        }
        const std::chrono::milliseconds timeout(timeout_ms);

        auto result = std::make_unique<dist_pg>();
        result->timeout = timeout;

#ifdef USE_C10D_NCCL
        if (name == "nccl") {
            const auto devices = static_cast<int>(torch::cuda::device_count());
            if (devices <= 0) throw Unavailable("nccl needs a CUDA device, none is visible");
            if (device_index < 0 || device_index >= devices) {
                throw Invalid("CUDA device " + std::to_string(device_index) + " does not exist (" +
                              std::to_string(devices) + " visible)");
            }
            // Without this, ProcessGroupNCCL's watchdog aborts the whole process when a
            // collective times out (TORCH_NCCL_ASYNC_ERROR_HANDLING=3); 2 aborts the
            // communicators only, so the failed wait() reports an error. A value set by the user
            // is kept.
            setenv("TORCH_NCCL_ASYNC_ERROR_HANDLING", "2", 0);
            result->device = c10::Device(c10::kCUDA, static_cast<c10::DeviceIndex>(device_index));
            // The rank's current device, as torch.cuda.set_device(LOCAL_RANK) in a DDP script.
            c10::impl::getDeviceGuardImpl(c10::kCUDA)->setDevice(result->device);
        }
#else
        (void)device_index;
#endif

        auto store = make_store(master_addr, port, host_store != 0, world_size, timeout, store_prefix);
        // The same layout as torch.distributed's default group: a ProcessGroup whose backend
        // gets its own namespace of keys in the store.
        auto pg = c10::make_intrusive<c10d::ProcessGroup>(store, rank, world_size);

#ifdef USE_C10D_GLOO
        if (name == "gloo") {
            auto opts = c10d::ProcessGroupGloo::Options::create_default(timeout);
            auto gloo = c10::make_intrusive<c10d::ProcessGroupGloo>(
                c10::make_intrusive<c10d::PrefixStore>("gloo/", store), rank, world_size, opts);
            pg->setDefaultBackend(c10d::ProcessGroup::BackendType::GLOO);
            pg->setBackend(c10::kCPU, c10d::ProcessGroup::BackendType::GLOO, gloo);
        }
#endif
#ifdef USE_C10D_NCCL
        if (name == "nccl") {
            auto opts = c10d::ProcessGroupNCCL::Options::create();
            opts->timeout = timeout;
            auto nccl = c10::make_intrusive<c10d::ProcessGroupNCCL>(
                c10::make_intrusive<c10d::PrefixStore>("nccl/", store), rank, world_size, opts);
            pg->setDefaultBackend(c10d::ProcessGroup::BackendType::NCCL);
            pg->setBoundDeviceId(result->device);
            pg->setBackend(c10::kCUDA, c10d::ProcessGroup::BackendType::NCCL, nccl);
        }
#endif
        pg->setGroupName("train");
        result->pg = std::move(pg);
        *out = result.release();
    });
}

void dist_pg_destroy(dist_pg* pg) {
    if (pg == nullptr) return;
    try {
        delete pg;
    } catch (...) {
        // A destructor that throws (a backend shutting down after a failure): nothing to do.
    }
}

int dist_pg_rank(const dist_pg* pg) { return pg != nullptr && pg->pg ? pg->pg->getRank() : -1; }

int dist_pg_world_size(const dist_pg* pg) { return pg != nullptr && pg->pg ? pg->pg->getSize() : -1; }

double dist_pg_sync_bn_seconds(const dist_pg* pg) {
    return pg == nullptr ? 0.0 : static_cast<double>(pg->sync_bn_ns.load()) * 1e-9;
}

dist_status dist_allreduce(dist_pg* pg, const dist_tensor* tensors, size_t n, dist_reduce_op op,
                           int64_t bucket_bytes, char** err) {
    return guarded(err, [&] {
        check_pg(pg);
        if (op != DIST_REDUCE_SUM && op != DIST_REDUCE_AVG) throw Invalid("unknown reduce op");
        if (bucket_bytes <= 0) throw Invalid("bucket size must be positive");
        auto ts = borrow(tensors, n, "tensor");
        check_on_device(ts, pg, "allreduce");
        if (op == DIST_REDUCE_AVG) {
            for (size_t i = 0; i < ts.size(); ++i) {
                if (!at::isFloatingType(ts[i].scalar_type()) && !at::isComplexType(ts[i].scalar_type())) {
                    throw Invalid("allreduce avg: tensor " + std::to_string(i) + " is " +
                                  std::string(c10::toString(ts[i].scalar_type())) +
                                  ", averaging needs floating point");
                }
            }
        }
        if (ts.empty()) return;
        // Gradients and statistics are not part of the autograd graph.
        at::NoGradGuard no_grad;
        // Buckets of one dtype, at most bucket_bytes each (a larger tensor alone).
        auto groups = torch::utils::take_tensors(ts, static_cast<size_t>(bucket_bytes));
        struct Bucket {
            std::vector<at::Tensor> members;
            at::Tensor flat;
            c10::intrusive_ptr<c10d::Work> work;
        };
        std::vector<Bucket> buckets;
        buckets.reserve(groups.size());
        c10d::AllreduceOptions opts;
        opts.reduceOp = c10d::ReduceOp::SUM;
        for (auto& g : groups) {
            Bucket b;
            b.members = std::move(g.tensors);
            if (b.members.size() == 1 && b.members[0].is_contiguous()) {
                b.flat = b.members[0];
            } else {
                b.flat = torch::utils::flatten_dense_tensors(b.members);
            }
            std::vector<at::Tensor> one{b.flat};
            b.work = pg->pg->allreduce(one, opts);
            buckets.push_back(std::move(b));
        }
        const double size = static_cast<double>(pg->pg->getSize());
        for (auto& b : buckets) {
            wait(b.work, pg);
            if (op == DIST_REDUCE_AVG) b.flat.div_(size);
            if (!b.flat.is_same(b.members[0])) {
                auto parts = torch::utils::unflatten_dense_tensors(b.flat, b.members);
                for (size_t i = 0; i < parts.size(); ++i) b.members[i].copy_(parts[i]);
            }
        }
    });
}

dist_status dist_broadcast(dist_pg* pg, const dist_tensor* tensors, size_t n, int root,
                           int64_t bucket_bytes, char** err) {
    return guarded(err, [&] {
        check_pg(pg);
        if (root < 0 || root >= pg->pg->getSize()) {
            throw Invalid("broadcast root " + std::to_string(root) + " is not a rank");
        }
        if (bucket_bytes <= 0) throw Invalid("bucket size must be positive");
        auto ts = borrow(tensors, n, "tensor");
        check_on_device(ts, pg, "broadcast");
        if (ts.empty()) return;
        at::NoGradGuard no_grad;
        // broadcast_coalesced waits for each bucket itself (Work::wait without a deadline);
        // the backend's timeout still bounds every collective.
        c10d::broadcast_coalesced(pg->pg, ts, static_cast<size_t>(bucket_bytes), root);
    });
}

dist_status dist_barrier(dist_pg* pg, char** err) {
    return guarded(err, [&] {
        check_pg(pg);
        c10d::BarrierOptions opts;
        if (pg->device.is_cuda()) opts.device_ids = {pg->device.index()};
        wait(pg->pg->barrier(opts), pg);
    });
}

dist_status dist_allgather(dist_pg* pg, const void* in, size_t count, dist_dtype dtype, void* out,
                           char** err) {
    return guarded(err, [&] {
        check_pg(pg);
        if (count > 0 && (in == nullptr || out == nullptr)) throw Invalid("null buffer");
        at::ScalarType st;
        switch (dtype) {
            case DIST_DTYPE_I64: st = at::kLong; break;
            case DIST_DTYPE_F64: st = at::kDouble; break;
            case DIST_DTYPE_F32: st = at::kFloat; break;
            default: throw Invalid("unknown dtype");
        }
        const int size = pg->pg->getSize();
        at::NoGradGuard no_grad;
        auto cpu_opts = at::TensorOptions().dtype(st);
        auto input = at::from_blob(const_cast<void*>(in), {static_cast<int64_t>(count)}, cpu_opts)
                         .to(pg->device, /*non_blocking=*/false, /*copy=*/true);
        std::vector<at::Tensor> outputs;
        outputs.reserve(size);
        for (int r = 0; r < size; ++r) outputs.push_back(at::empty_like(input));
        std::vector<std::vector<at::Tensor>> output_lists{outputs};
        std::vector<at::Tensor> inputs{input};
        wait(pg->pg->allgather(output_lists, inputs), pg);
        auto gathered = at::cat(output_lists[0]).to(at::kCPU).contiguous();
        std::memcpy(out, gathered.data_ptr(), gathered.nbytes());
    });
}

dist_status dist_reducer_create(dist_pg* pg, const dist_tensor* params, size_t n,
                                int64_t bucket_bytes_cap, int64_t first_bucket_bytes_cap,
                                int find_unused_parameters, int gradient_as_bucket_view,
                                dist_reducer** out, char** err) {
    return guarded(err, [&] {
        if (out == nullptr) throw Invalid("null output handle");
        *out = nullptr;
        check_pg(pg);
        if (bucket_bytes_cap <= 0 || first_bucket_bytes_cap <= 0) throw Invalid("bucket sizes must be positive");
        auto ps = borrow(params, n, "parameter");
        if (ps.empty()) throw Invalid("no parameters");
        check_on_device(ps, pg, "reducer");
        for (size_t i = 0; i < ps.size(); ++i) {
            if (!ps[i].requires_grad() || !ps[i].is_leaf()) {
                throw Invalid("reducer: parameter " + std::to_string(i) +
                              " is not a leaf tensor that requires grad");
            }
        }
        // As DistributedDataParallel: same parameters on every rank (a collective).
        c10d::verify_params_across_processes(pg->pg, ps, std::nullopt);

        const bool find_unused = find_unused_parameters != 0;
        // As DistributedDataParallel (torch/nn/parallel/distributed.py, _ddp_init_helper): the
        // first iteration uses one bucket when every parameter gets a gradient (their order in
        // backward is unknown until then); the Reducer rebuilds the buckets after it, with the
        // first bucket capped at first_bucket_bytes_cap and the others at bucket_bytes_cap.
        std::vector<size_t> limits;
        if (find_unused) {
            limits = {static_cast<size_t>(first_bucket_bytes_cap), static_cast<size_t>(bucket_bytes_cap)};
        } else {
            limits = {std::numeric_limits<size_t>::max()};
        }
        std::vector<bool> expect_sparse(ps.size(), false);
        auto [bucket_indices, per_bucket_limits] =
            c10d::compute_bucket_assignment_by_size(ps, limits, expect_sparse, {}, std::nullopt);
        // Reversed: gradients arrive roughly in the reverse order of the parameters.
        std::reverse(bucket_indices.begin(), bucket_indices.end());
        (void)per_bucket_limits;

        std::unordered_map<size_t, std::string> names;
        for (size_t i = 0; i < ps.size(); ++i) names.emplace(i, "param" + std::to_string(i));

        auto reducer = std::make_shared<c10d::Reducer>(
            ps, std::move(bucket_indices), pg->pg, std::move(expect_sparse), bucket_bytes_cap,
            find_unused, gradient_as_bucket_view != 0, std::move(names), first_bucket_bytes_cap,
            /*skip_all_reduce_unused_params=*/false, /*use_python_reducer=*/false,
            /*bucket_bytes_cap_list=*/std::vector<int64_t>{});
        auto clock = std::make_shared<ReducerClock>();
        reducer->register_comm_hook(std::make_unique<TimedAllreduceHook>(pg->pg, clock));
        *out = new dist_reducer{std::move(reducer), std::move(clock)};
    });
}

dist_status dist_reducer_prepare_for_backward(dist_reducer* r, const dist_tensor* outputs,
                                              size_t n, int* rebuilt, char** err) {
    return guarded(err, [&] {
        if (rebuilt != nullptr) *rebuilt = 0;
        if (r == nullptr || !r->reducer) throw Invalid("null reducer");
        auto outs = borrow(outputs, n, "output");
        // DDP calls this at the start of forward, once per iteration; it only does something
        // (re-bucketing, with a broadcast from rank 0) before the second iteration.
        bool done = r->reducer->rebuild_buckets();
        if (rebuilt != nullptr) *rebuilt = done ? 1 : 0;
        r->reducer->prepare_for_backward(outs);
    });
}

dist_status dist_reducer_backward(dist_reducer* r, dist_tensor loss, char** err) {
    if (err != nullptr) *err = nullptr;
    if (r == nullptr || !r->reducer || r->clock == nullptr) {
        set_err(err, "null reducer");
        return DIST_ERR_INVALID;
    }
    auto* l = static_cast<const at::Tensor*>(loss);
    if (l == nullptr || !l->defined()) {
        set_err(err, "undefined loss");
        return DIST_ERR_INVALID;
    }
    const int64_t started = now_ns();
    try {
        torch::autograd::backward({*l});
    } catch (const c10::Error& e) {
        // The autograd engine rethrows what the reducer's all-reduce threw (gloo's "Connection
        // closed by peer", a timeout...); the first line says it.
        auto msg = first_line(e.what_without_backtrace());
        set_err(err, msg);
        return mentions_timeout(msg) ? DIST_ERR_TIMEOUT : DIST_ERR_COLLECTIVE;
    } catch (const std::exception& e) {
        auto msg = first_line(e.what());
        set_err(err, msg);
        return mentions_timeout(msg) ? DIST_ERR_TIMEOUT : DIST_ERR_COLLECTIVE;
    } catch (...) {
        set_err(err, "unknown C++ exception");
        return DIST_ERR_INTERNAL;
    }
    const int64_t ended = now_ns();
    auto& clock = *r->clock;
    clock.backward_passes += 1;
    clock.backward_ns += ended - started;
    // No launch during this pass (a backward the reducer was not prepared for): nothing waited.
    const int64_t last = clock.last_launch_ns.load();
    if (last >= started) clock.exposed_ns += ended - last;
    return DIST_OK;
}

void dist_reducer_timings_get(const dist_reducer* r, dist_reducer_timings* out) {
    if (out == nullptr) return;
    *out = dist_reducer_timings{};
    if (r == nullptr || r->clock == nullptr) return;
    const auto& c = *r->clock;
    out->backward_passes = c.backward_passes;
    out->allreduces = c.allreduces.load();
    out->backward_seconds = static_cast<double>(c.backward_ns) * 1e-9;
    out->allreduce_seconds = static_cast<double>(c.allreduce_ns.load()) * 1e-9;
    out->exposed_seconds = static_cast<double>(c.exposed_ns) * 1e-9;
}

dist_status dist_sync_batch_norm(dist_pg* pg, dist_tensor input, dist_tensor weight, dist_tensor bias,
                                 dist_tensor running_mean, dist_tensor running_var, double momentum,
                                 double eps, dist_tensor* out, char** err) {
    return guarded(err, [&] {
        if (out == nullptr) throw Invalid("null output");
        *out = nullptr;
        check_pg(pg);
        auto optional = [](dist_tensor t) {
            auto* p = static_cast<const at::Tensor*>(t);
            return p == nullptr ? at::Tensor() : *p;
        };
        auto x = optional(input);
        if (!x.defined() || x.dim() < 2) throw Invalid("sync batch norm: the input must be [N, C, ...]");
        if (x.device() != pg->device) {
            throw Invalid("sync batch norm: the input is on " + x.device().str() +
                          ", the process group's backend needs " + pg->device.str());
        }
        const int64_t c = x.size(1);
        auto w = optional(weight);
        auto b = optional(bias);
        auto rm = optional(running_mean);
        auto rv = optional(running_var);
        for (const auto* t : {&w, &b, &rm, &rv}) {
            if (t->defined() && (t->dim() != 1 || t->size(0) != c)) {
                throw Invalid("sync batch norm: per-channel tensors must have " + std::to_string(c) + " values");
            }
        }
        // A missing affine transform is the identity (tensors that need no gradient), so that the
        // function's inputs are always input, weight, bias (custom functions take no undefined
        // tensor).
        auto per_channel = x.options().dtype(at::kFloat);
        if (!w.defined()) w = at::ones({c}, per_channel);
        if (!b.defined()) b = at::zeros({c}, per_channel);
        auto some = [](const at::Tensor& t) { return t.defined() ? std::optional<at::Tensor>(t) : std::nullopt; };
        auto result = SyncBatchNormFn::apply(x, w, b, some(rm), some(rv), momentum, eps,
                                             reinterpret_cast<int64_t>(pg));
        *out = new at::Tensor(std::move(result[0]));
    });
}

dist_status dist_take_grads(const dist_tensor* params, size_t n, dist_tensor* out, char** err) {
    return guarded(err, [&] {
        if (n > 0 && out == nullptr) throw Invalid("null output array");
        auto ps = borrow(params, n, "parameter");
        for (size_t i = 0; i < ps.size(); ++i) {
            auto& grad = ps[i].mutable_grad();
            out[i] = new at::Tensor(std::move(grad));
            grad = at::Tensor();
        }
    });
}

void dist_reducer_destroy(dist_reducer* r) {
    if (r == nullptr) return;
    try {
        delete r;
    } catch (...) {
        // ~Reducer is noexcept(false); an error there leaves nothing to clean up.
    }
}

}  // extern "C"

#else  // TRAIN_DIST_STUB: built without libtorch's c10d headers; every call says so.

#include <stdlib.h>
#include <string.h>

static dist_status unavailable(char** err) {
    static const char msg[] =
        "train was built without libtorch's c10d headers (see the build warnings): no "
        "distributed backend is available";
    if (err != NULL) {
        *err = static_cast<char*>(malloc(sizeof msg));
        if (*err != NULL) memcpy(*err, msg, sizeof msg);
    }
    return DIST_ERR_UNAVAILABLE;
}

extern "C" {
void dist_free_string(char* s) { free(s); }
int dist_backend_available(const char*) { return 0; }
dist_status dist_pg_create(const char*, int, int, const char*, int, int, const char*, int64_t, int,
                           dist_pg** out, char** err) {
    if (out != NULL) *out = NULL;
    return unavailable(err);
}
void dist_pg_destroy(dist_pg*) {}
int dist_pg_rank(const dist_pg*) { return -1; }
int dist_pg_world_size(const dist_pg*) { return -1; }
double dist_pg_sync_bn_seconds(const dist_pg*) { return 0.0; }
dist_status dist_allreduce(dist_pg*, const dist_tensor*, size_t, dist_reduce_op, int64_t, char** err) {
    return unavailable(err);
}
dist_status dist_broadcast(dist_pg*, const dist_tensor*, size_t, int, int64_t, char** err) {
    return unavailable(err);
}
dist_status dist_barrier(dist_pg*, char** err) { return unavailable(err); }
dist_status dist_allgather(dist_pg*, const void*, size_t, dist_dtype, void*, char** err) {
    return unavailable(err);
}
dist_status dist_reducer_create(dist_pg*, const dist_tensor*, size_t, int64_t, int64_t, int, int,
                                dist_reducer** out, char** err) {
    if (out != NULL) *out = NULL;
    return unavailable(err);
}
dist_status dist_reducer_prepare_for_backward(dist_reducer*, const dist_tensor*, size_t, int* rebuilt,
                                              char** err) {
    if (rebuilt != NULL) *rebuilt = 0;
    return unavailable(err);
}
dist_status dist_reducer_backward(dist_reducer*, dist_tensor, char** err) { return unavailable(err); }
void dist_reducer_timings_get(const dist_reducer*, dist_reducer_timings* out) {
    if (out != NULL) memset(out, 0, sizeof *out);
}
dist_status dist_sync_batch_norm(dist_pg*, dist_tensor, dist_tensor, dist_tensor, dist_tensor, dist_tensor,
                                 double, double, dist_tensor* out, char** err) {
    if (out != NULL) *out = NULL;
    return unavailable(err);
}
dist_status dist_take_grads(const dist_tensor*, size_t, dist_tensor*, char** err) { return unavailable(err); }
void dist_reducer_destroy(dist_reducer*) {}
}

#endif  // TRAIN_DIST_STUB
