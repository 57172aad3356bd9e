// The tensors of one case: deterministic seeded inputs shared by every backend, one set of output
// buffers per backend, the binding of both to KernelArgs, and the fp64 reference outputs.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

#include "../../reference/reference.hpp"
#include "problem.hpp"
#include "registry.hpp"
#include "tensor.hpp"

namespace nb {

/// Input distributions of the agreement check.
///  normal        x ~ N(0, 1)
///  large_offset  x ~ offset + N(0, 1): breaks the one-pass E[x^2] - E[x]^2 variance (CONVENTIONS
///                section 2). offset = 1e4 for f32; for 16-bit data a value of mean 1e4 and std 1
///                is not representable (bf16 spacing at 1e4 is 64, f16 spacing 8: every element
///                would round to the same value), so offset = 256 for f16 (spacing 0.25) and 32
///                for bf16 (spacing 0.25), the largest powers of two that keep std 1 resolvable.
enum class Distribution { normal, large_offset };
std::string_view to_string(Distribution d);
/// Throws std::invalid_argument on an unknown name.
Distribution parse_distribution(std::string_view s);
double distribution_offset(Distribution d, DType dt);

/// Inputs of a case, read-only for every backend (running statistics are copied per backend).
/// gamma ~ U(0.5, 1.5), beta ~ U(-0.5, 0.5), dy ~ N(0, 1), running_mean ~ offset + U(-0.5, 0.5),
/// running_var ~ U(0.5, 1.5); for bwd, mean/invstd are the fp64 reference statistics of x
/// rounded to fp32 (as a forward pass would have saved them).
struct CaseInputs {
  HostTensor x, dy, gamma, beta, running_mean, running_var, mean, invstd;
};

/// Output buffers of one backend (and its private copy of the running statistics).
struct CaseOutputs {
  HostTensor y, mean, invstd, running_mean, running_var, dx, dgamma, dbeta;
};

/// Generates the inputs the problem's pass needs. Deterministic: a function of (problem, dist,
/// seed) only, whatever the thread count. misalign_bytes shifts x, y, dy, dx off the 64-byte
/// boundary (tests). Throws std::bad_alloc when memory runs out.
CaseInputs make_inputs(const Problem& p, Distribution dist, std::uint64_t seed,
                       std::size_t misalign_bytes = 0);
/// Allocates the outputs of p's pass; running statistics start as copies of the inputs'.
CaseOutputs make_outputs(const Problem& p, const CaseInputs& in, std::size_t misalign_bytes = 0);
/// Points KernelArgs at the buffers the pass uses (nullptr elsewhere).
KernelArgs bind(const Problem& p, const CaseInputs& in, CaseOutputs& out);
/// Runs the fp64 reference on the inputs (as rounded to their dtypes).
ref::Tensors reference_outputs(const Problem& p, const CaseInputs& in);

/// Bytes the harness allocates for one case with `backends` output sets: inputs, outputs and the
/// fp64 reference tensors. Used by the memory budget.
std::uint64_t case_memory_bytes(const Problem& p, int backends);

/// 64-bit FNV-1a of a string, for seeds derived from repro strings.
std::uint64_t fnv1a(std::string_view s);

}  // namespace nb
