# Shared by the scripts that run the gmm_fixture_eval example (sourced, not run): builds it and
# reads its output (the readers print nothing, and never fail, where a run failed).
#   gmm_eval_build            builds the example; sets E to its path
#   gmm_eval_variant SOLVER   the VARIANT=… the official code uses (DPM-Solver++: reference,
#                             UniPC: bh2; nothing for iPNDM)
#   gmm_eval_ld3 < OUT        "RMS MEDIAN" of the learned schedule on the fresh noises
#   gmm_eval_best < OUT       "RMS MEDIAN NAME" of the best hand-made schedule there
gmm_eval_build() {
  cargo build --release --quiet -p ld3-train --example gmm_fixture_eval
  E=${CARGO_TARGET_DIR:-target}/release/examples/gmm_fixture_eval
}
gmm_eval_variant() {
  case $1 in dpm-solver++) echo VARIANT=reference ;; unipc) echo VARIANT=bh2 ;; esac
}
gmm_eval_ld3() {
  sed -n '/held-out:/,$p' | awk '/vs exact: ld3 /{print $4, $6}' || true
}
gmm_eval_best() {
  sed -n '/held-out:/,$p' | grep "vs exact:" | grep -v "teacher\|ld3 \|official" \
    | awk '{print $4, $6, $3}' | sort -g | head -1 || true
}
