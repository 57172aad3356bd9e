// The agreement check: every output of a backend against the fp64 reference on the same inputs,
// with the project's one tolerance policy.
//
// Error metric (after oneDNN benchdnn tests/benchdnn/utils/compare.cpp, adapted to random inputs):
//   err_i = |got_i - ref_i| / max(|ref_i|, rms(ref))
// i.e. relative error, except that elements smaller than the output's root-mean-square are
// measured against the RMS. benchdnn's fixed floor (absolute error below |ref| = 1e-5) assumes
// specially filled inputs; with normally distributed inputs outputs near zero carry the absolute
// rounding error of O(1) neighbours, so a relative measure there would flag correct kernels.
//
// Threshold for an output stored in dtype `out` of a problem with reduction length M:
//   trh = 4 * u(out) + 8 * u(f32) * (1 + kappa) * log2(2 + M)
//  - u(dt) = 2^-mantissa_digits(dt) is the unit roundoff: 5.96e-8 f32, 4.88e-4 f16, 3.91e-3 bf16,
//    so the threshold scales with the dtype's mantissa like benchdnn's trh = base * 2^(24-digits).
//    4 u allows the final rounding to land one ulp away (fp32 intermediate near a 16-bit tie).
//  - The second term is fp32 accumulation (CONVENTIONS: 16-bit data accumulate in fp32): a
//    blocked or pairwise sum of M terms has relative error ~ u * log2(M); the statistics' error is
//    amplified by the conditioning kappa = max |mean| / std over reduction units (1e4 for the
//    large-offset input), since y = (x - mean) * invstd loses |mean| * u / std. The one-pass
//    E[x^2] - E[x]^2 variance loses kappa^2 * u instead, which this threshold does not absorb:
//    at kappa = 1e4 it is O(1) or NaN, and is reported FAIL. For dx, kappa also includes the
//    cancellation of the backward formula (backward_cancellation below).
//  Examples: f32 normal input, M = 6.3e5: 9.5e-6; f32 large offset (kappa 1e4): 9.2e-2;
//  bf16 normal: 1.6e-2.
// In the subnormal range of the output dtype (f16 below 6.1e-5: spacing 2^-24) a correctly
// rounded value can be wrong by half the spacing in absolute terms; that much is not counted
// (err_i uses max(0, |got - ref| - spacing / 2)), so tiny f16 gradients are not flagged.
// An output that has a non-finite value where the reference is finite, or that is mostly zeros
// where the reference is not, fails whatever its error.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "case_data.hpp"

namespace nb {

enum class Output { y, mean, invstd, running_mean, running_var, dx, dgamma, dbeta };
std::string_view to_string(Output o);
/// The outputs a problem's pass produces, in this order: y, mean, invstd, running_mean,
/// running_var (fwd) or dx, dgamma, dbeta (bwd).
std::vector<Output> outputs_of(const Problem& p);

/// Conditioning of the reduction, max over units of |mean| * invstd (1 for rmsnorm, which sums
/// squares and has no cancellation), from the reference statistics.
double conditioning(const Problem& p, const CaseInputs& in, const ref::Tensors& ref);
/// Cancellation in the backward formula, added to kappa for dx:
///   rms(dy) * max|gamma| * max(invstd) / rms(dx_ref)  (at least 1; 0 for a forward pass).
/// dx = gamma * invstd * (dy - mean(dy) - xhat * mean(dy * xhat)) is normally as large as its
/// terms; when a reduction unit has M = 2 elements (BatchNorm N*H*W = 2, RMSNorm D = 1, ...)
/// xhat = +-sqrt(var / (var + eps)) and dx shrinks to ~ eps / var of its terms, so any fp32
/// kernel loses var / eps of relative accuracy. The true output scale says how much.
double backward_cancellation(const Problem& p, const CaseInputs& in, const ref::Tensors& ref);
/// The policy above. out is the dtype the output is stored in.
double tolerance(DType out, std::int64_t reduction_size, double kappa);

enum class Status { pass, fail, skip };
std::string_view to_string(Status s);

struct OutputAgreement {
  Output output;
  double max_abs_err = 0;  ///< max |got - ref|
  double max_rel_err = 0;  ///< max err_i as defined above
  double threshold = 0;
  std::int64_t worst_index = -1;  ///< memory index of max_rel_err
  std::string failure;            ///< empty if it passes
};

struct Agreement {
  Status status = Status::skip;
  std::vector<OutputAgreement> outputs;
  /// The output with the largest max_rel_err / threshold (the failing one, if any).
  std::string worst_output;
  double max_abs_err = 0, max_rel_err = 0, threshold = 0;
  std::string reason;  ///< one line: why it failed or was skipped
};

/// Compares every output of p's pass in `got` with `ref` (the fp64 reference of the same inputs).
Agreement compare(const Problem& p, const CaseInputs& in, const CaseOutputs& got,
                  const ref::Tensors& ref);

}  // namespace nb
