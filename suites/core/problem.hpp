// The problem descriptor: one normalization case (method, pass, dtype, layout, sizes, options)
// and its canonical repro string.
//
// Repro grammar (printed by to_repro, read back by parse_repro; fields separated by ':'):
//
//   METHOD:PASS:DTYPE:LAYOUT:SHAPE[:OPTION]...
//   METHOD  batchnorm | layernorm | groupnorm | instancenorm | rmsnorm
//   PASS    fwd_train | fwd_infer | bwd
//   DTYPE   f32 | bf16 | f16
//   LAYOUT  nchw | nhwc
//   SHAPE   n<N>c<C>h<H>w<W>[g<G>]   image tensor (N, C, H, W); g only for groupnorm
//           t<T>d<D>                 rows of a (T, D) tensor, LayerNorm/RMSNorm only
//                                    (= n<T>c<D>h1w1, normalized_shape (D))
//           a missing w equals h and a missing h equals w; both missing means 1 (n2c8 = n2c8h1w1)
//   OPTION  eps<float>  (default 1e-05)     mom<float>  (batchnorm only, default 0.1)
//           noaffine    (no gamma/beta; the default is affine)
//
// Canonical form, always printed in this order: the shape as n..c..h..w..[g..] (t..d.. for
// LayerNorm/RMSNorm with H = W = 1), then eps, then mom for batchnorm, then noaffine if set.
// Floats are printed in the shortest form that reads back to the same double, so
// parse_repro(to_repro(p)) == p for every valid p. Example:
//   batchnorm:fwd_train:f32:nchw:n50c64h112w112:eps1e-05:mom0.1
//   groupnorm:bwd:bf16:nhwc:n2c320h96w96g32:eps1e-05
//   rmsnorm:fwd_infer:bf16:nchw:t16384d4096:eps1e-06
//
// Semantics (CONVENTIONS section 1): statistics per reduction unit, biased variance with eps inside
// the square root; BatchNorm fwd_train updates running_mean/running_var with the unbiased variance;
// fwd_infer means BatchNorm normalises with running statistics and the other methods produce the
// training-mode y but save no statistics; bwd is the training-mode backward (batch statistics).
// LayerNorm/RMSNorm normalise all C*H*W elements of a sample; their gamma/beta have
// normalized_shape (C, H, W) stored C-major (c*H*W + h*W + w) whatever the layout of x.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "dtype.hpp"

namespace nb {

enum class Method { batchnorm, layernorm, groupnorm, instancenorm, rmsnorm };
enum class Pass { fwd_train, fwd_infer, bwd };
enum class Layout { nchw, nhwc };

inline constexpr Method kAllMethods[] = {Method::batchnorm, Method::layernorm, Method::groupnorm,
                                         Method::instancenorm, Method::rmsnorm};
inline constexpr Pass kAllPasses[] = {Pass::fwd_train, Pass::fwd_infer, Pass::bwd};
inline constexpr DType kAllDTypes[] = {DType::f32, DType::bf16, DType::f16};
inline constexpr Layout kAllLayouts[] = {Layout::nchw, Layout::nhwc};

std::string_view to_string(Method m);
std::string_view to_string(Pass p);
std::string_view to_string(Layout l);
/// Each parser throws std::invalid_argument("unknown method 'x' (expected ...)") on bad input.
Method parse_method(std::string_view s);
Pass parse_pass(std::string_view s);
Layout parse_layout(std::string_view s);

struct Problem {
  Method method = Method::batchnorm;
  Pass pass = Pass::fwd_train;
  DType dtype = DType::f32;
  Layout layout = Layout::nchw;
  std::int64_t n = 1, c = 1, h = 1, w = 1;
  std::int64_t groups = 1;  ///< num_groups, groupnorm only (instancenorm is groups = c internally)
  double eps = 1e-5;
  double momentum = 0.1;  ///< batchnorm only: running = (1 - momentum) * running + momentum * batch
  bool affine = true;

  bool operator==(const Problem&) const = default;

  std::int64_t spatial() const { return h * w; }
  std::int64_t numel() const { return n * c * h * w; }
  /// Number of groups the statistics are taken over per sample: groups for groupnorm, c for
  /// instancenorm, 1 otherwise.
  std::int64_t effective_groups() const;
  /// Elements reduced into one statistic (M in CONVENTIONS): N*H*W (batchnorm), C*H*W
  /// (layernorm, rmsnorm), (C/G)*H*W (groupnorm), H*W (instancenorm).
  std::int64_t reduction_size() const;
  /// Number of saved statistics (length of mean and invstd): C, N, N*G, N*C, N.
  std::int64_t stats_count() const;
  /// Length of gamma and beta: C, or C*H*W for layernorm/rmsnorm (normalized_shape).
  std::int64_t param_count() const;
  bool has_beta() const { return affine && method != Method::rmsnorm; }
  bool is_rows() const { return (method == Method::layernorm || method == Method::rmsnorm); }
  /// Memory offset (in elements) of logical element (n, c, h, w) under this->layout.
  std::int64_t offset(std::int64_t in, std::int64_t ic, std::int64_t ih, std::int64_t iw) const {
    return layout == Layout::nchw ? ((in * c + ic) * h + ih) * w + iw
                                  : ((in * h + ih) * w + iw) * c + ic;
  }
};

/// Returns the reason the problem is invalid, or nullopt when it is valid: a non-positive size,
/// C % num_groups != 0 for groupnorm, num_groups != 1 for another method, eps <= 0 or not finite,
/// momentum outside [0, 1], batchnorm fwd_train/bwd with N*H*W == 1 (PyTorch: "Expected more than
/// 1 value per channel when training"), more than 2^62 elements.
std::optional<std::string> validate(const Problem& p);
/// Throws std::invalid_argument with the validate() reason, prefixed by the repro string.
void require_valid(const Problem& p);

/// Canonical repro string (grammar above).
std::string to_repro(const Problem& p);
/// Parses a repro string and validates it; throws std::invalid_argument with a one-line reason
/// naming the offending field on a syntax error, an unknown name or an invalid problem.
Problem parse_repro(std::string_view s);

/// Parses just the SHAPE field into p (n, c, h, w, groups). When allow_missing_n is true a shape
/// without n<N> is accepted and p.n is left as it was (configs cross such shapes with a batch
/// axis). Throws std::invalid_argument on a syntax error.
void parse_shape(std::string_view s, Problem& p, bool allow_missing_n = false);
/// Prints the SHAPE field of p in canonical form.
std::string shape_string(const Problem& p);

}  // namespace nb
