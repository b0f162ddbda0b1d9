// Tuning: each part of a layer (forward, input gradient, weight and position gradients) runs the path that was
// fastest when timed on this device, as cuDNN's benchmark mode picks its algorithms. The first call of each shape
// times every path that applies and the switches allow, then the choice is cached for the process (keyed by
// device, part, dtype, memory formats and sizes). The cost rule of tiled_taps_host.h decides otherwise.
//
// DCLS_CONVERT_CUDA_TUNE: "on"/"1" tunes, "off"/"0" does not; unset (or "auto") follows
// torch.backends.cudnn.benchmark, except under torch.use_deterministic_algorithms(True) or
// torch.backends.cudnn.deterministic (every path is deterministic, but which one wins may differ between
// processes, so the bits would). A switch that forces a path on for a part (DCLS_CONVERT_CUDA_MMA,
// _PLANE, _FMA, _TF32 naming it) turns tuning off for that part; one that keeps a path off removes it from the
// candidates. The tables' path is timed with every tap between grid cells (4 corners each): what a layer in
// training has once its positions move, not the on-grid taps of a fresh conversion, which would flatter it.
// No tuning while a CUDA graph is being captured (a cached choice still applies).
#pragma once

#include <ATen/ATen.h>
#include <ATen/Context.h>

#include <algorithm>
#include <cstdlib>
#include <functional>
#include <mutex>
#include <sstream>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

#include "dcls_convert/interpolation.h"

namespace dcls_convert {

enum class Path { kPlane, kMma, kFma, kTables };

inline const char* path_name(Path p) {
  switch (p) {
    case Path::kPlane: return "plane";
    case Path::kMma: return "mma";
    case Path::kFma: return "fma";
    default: return "tables";
  }
}

inline bool tuning_on() {
  const char* e = std::getenv("DCLS_CONVERT_CUDA_TUNE");
  const std::string v = e == nullptr ? "" : e;
  if (v == "on" || v == "1") return true;
  if (v == "off" || v == "0") return false;
  const auto& ctx = at::globalContext();
  return ctx.benchmarkCuDNN() && !ctx.deterministicAlgorithms() && !ctx.deterministicCuDNN();
}

// The process's tuned choices, keyed by tune_key.
class PathCache {
 public:
  bool find(const std::string& key, Path* p) {
    std::lock_guard<std::mutex> lock(mu_);
    const auto it = map_.find(key);
    if (it == map_.end()) return false;
    *p = it->second;
    return true;
  }
  void store(const std::string& key, Path p) {
    std::lock_guard<std::mutex> lock(mu_);
    map_[key] = p;
  }
  std::vector<std::string> list() {
    std::lock_guard<std::mutex> lock(mu_);
    std::vector<std::string> r;
    for (const auto& kv : map_) r.push_back(kv.first + " -> " + path_name(kv.second));
    std::sort(r.begin(), r.end());
    return r;
  }
  void clear() {
    std::lock_guard<std::mutex> lock(mu_);
    map_.clear();
  }

 private:
  std::mutex mu_;
  std::unordered_map<std::string, Path> map_;
};

inline PathCache& path_cache() {
  static PathCache cache;
  return cache;
}
inline std::vector<std::string> tuned_paths() { return path_cache().list(); }
inline void clear_tuned_paths() { path_cache().clear(); }

// What a part's choice depends on: the part ("forward", "grad_input", "grad_taps" with the gradients asked), the
// device, the dtype, the sizes of the layer and the strides (memory formats) of the tensors its kernels read and
// write. Readable, since tuned_paths() lists them.
template <typename Args>
std::string tune_key(const std::string& part, const Args& a, std::initializer_list<at::Tensor> tensors) {
  std::ostringstream s;
  const at::Tensor& first = *tensors.begin();
  s << part << " " << first.device() << " " << first.scalar_type() << " N" << a.N << " C" << a.C << " " << a.H
    << "x" << a.W << "->" << a.Ho << "x" << a.Wo << " window " << a.Lh << "x" << a.Lw << " stride " << a.sh << "x"
    << a.sw << " padding " << a.ph << "x" << a.pw << " K" << a.K << (a.interp == kBilinear ? " bilinear" : " nearest");
  for (const auto& t : tensors) {
    s << (t.is_contiguous() ? " nchw" : t.is_contiguous(at::MemoryFormat::ChannelsLast) ? " cl" : " strided");
  }
  return s.str();
}

// How a part picks its path: by the cost rule (kRule), from the cache (kCached: only that path is planned), or by
// timing every allowed path that applies (kTune).
struct PathSelect {
  enum Mode { kRule, kCached, kTune } mode = kRule;
  Path cached = Path::kTables;
  std::string key;
  // Whether to plan path p: rule_wants under the cost rule, the cached path only, or every path the switches allow.
  bool consider(Path p, bool rule_wants, bool allowed) const {
    if (mode == kRule) return rule_wants;
    if (mode == kCached) return p == cached;
    return allowed;
  }
  // Under the cost rule a path is planned only where the ones before it (plane, mma, fma) did not apply.
  bool after(bool earlier_ok) const { return mode != kRule || !earlier_ok; }
};

// forced: a switch forces a path for this part; key(): the part's tune_key; may_tune(): no CUDA graph is being
// captured on the current stream. (Neither is asked for unless tuning is on: no cost per call otherwise.)
template <typename KeyFn, typename MayTuneFn>
PathSelect path_select(bool forced, KeyFn key, MayTuneFn may_tune) {
  PathSelect s;
  if (forced || !tuning_on()) return s;
  std::string k = key();
  if (path_cache().find(k, &s.cached)) {
    s.mode = PathSelect::kCached;
  } else if (may_tune()) {
    s.mode = PathSelect::kTune;
    s.key = std::move(k);
  }
  return s;
}

struct Candidate {
  Path path;
  std::function<void()> run;
};

// The fastest candidate by time_ms (a launch policy's timer: CUDA events, or the emulation's kernel costs), stored
// for the key. One candidate is stored untimed.
template <typename TimeMs>
Path tune_paths(const PathSelect& sel, const std::vector<Candidate>& candidates, TimeMs time_ms) {
  Path best = Path::kTables;
  double best_ms = 0.0;
  for (size_t i = 0; i < candidates.size(); ++i) {
    const double ms = candidates.size() == 1 ? 0.0 : time_ms(candidates[i].run);
    if (i == 0 || ms < best_ms) {
      best = candidates[i].path;
      best_ms = ms;
    }
  }
  path_cache().store(sel.key, best);
  return best;
}

// Positions (D, C, 1, K) moved between grid cells: every bilinear tap then makes its 4 corners (2 in 1-D), as in
// training; the tables' path is timed on them. window: the window per axis of the positions' first dimension.
inline at::Tensor between_cells(const at::Tensor& pos, at::IntArrayRef window) {
  auto r = pos.clone();
  for (int64_t d = 0; d < pos.size(0); ++d) {
    const int64_t L = window[d];
    if (L < 2) {
      r[d].zero_();
      continue;
    }
    // grid coordinate u = p + L / 2 (interpolation.h), floored into [0, L - 2], then half a cell on
    auto u = (pos[d] + double(L / 2)).nan_to_num(0.0).floor().clamp(0.0, double(L - 2));
    r[d].copy_(u + (0.5 - double(L / 2)));
  }
  return r;
}

}  // namespace dcls_convert
