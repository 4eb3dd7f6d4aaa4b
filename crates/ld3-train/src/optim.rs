//! The optimisers LD3 uses, on small parameter vectors (θ, ξ ∈ R^{N+1}), with serialisable state
//! so a run can be resumed exactly.

use serde::{Deserialize, Serialize};

/// Scales `g` to norm `max_norm` when it is longer (PyTorch's `clip_grad_norm_`).
pub fn clip_grad_norm(g: &mut [f64], max_norm: f64) {
    let norm = g.iter().map(|v| v * v).sum::<f64>().sqrt();
    if norm > max_norm {
        let s = max_norm / (norm + 1e-6);
        g.iter_mut().for_each(|v| *v *= s);
    }
}

/// RMSprop with momentum (PyTorch semantics: α = 0.99, ε = 1e-8, not centred).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RmsProp {
    /// Learning rate.
    pub lr: f64,
    /// Momentum.
    pub momentum: f64,
    /// Smoothing constant α.
    pub alpha: f64,
    /// ε.
    pub eps: f64,
    square_avg: Vec<f64>,
    buffer: Vec<f64>,
}

impl RmsProp {
    /// A fresh optimiser for `n` parameters.
    pub fn new(n: usize, lr: f64, momentum: f64) -> Self {
        Self {
            lr,
            momentum,
            alpha: 0.99,
            eps: 1e-8,
            square_avg: vec![0.0; n],
            buffer: vec![0.0; n],
        }
    }

    /// One step: v ← αv + (1−α)g², b ← μb + g/(√v + ε), p ← p − lr·b.
    pub fn step(&mut self, params: &mut [f64], grad: &[f64]) {
        for i in 0..params.len() {
            let v = self.alpha * self.square_avg[i] + (1.0 - self.alpha) * grad[i] * grad[i];
            self.square_avg[i] = v;
            let update = grad[i] / (v.sqrt() + self.eps);
            self.buffer[i] = self.momentum * self.buffer[i] + update;
            params[i] -= self.lr
                * if self.momentum > 0.0 {
                    self.buffer[i]
                } else {
                    update
                };
        }
    }
}

/// Plain SGD.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Sgd {
    /// Learning rate.
    pub lr: f64,
}

impl Sgd {
    /// p ← p − lr·g.
    pub fn step(&self, params: &mut [f64], grad: &[f64]) {
        params
            .iter_mut()
            .zip(grad)
            .for_each(|(p, g)| *p -= self.lr * g);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rmsprop_matches_pytorch_first_steps() {
        // torch.optim.RMSprop([p], lr=0.01, momentum=0.9) with p = 1, grads 0.5 then -0.2:
        // v1 = 0.0025, b1 = 0.5/(0.05+1e-8), p1 = 1 - 0.01*b1.
        let mut o = RmsProp::new(1, 0.01, 0.9);
        let mut p = [1.0];
        o.step(&mut p, &[0.5]);
        let b1 = 0.5 / (0.0025f64.sqrt() + 1e-8);
        assert!((p[0] - (1.0 - 0.01 * b1)).abs() < 1e-12);
        o.step(&mut p, &[-0.2]);
        let v2 = 0.99 * 0.0025 + 0.01 * 0.04;
        let b2 = 0.9 * b1 + (-0.2) / (f64::sqrt(v2) + 1e-8);
        assert!((p[0] - (1.0 - 0.01 * b1 - 0.01 * b2)).abs() < 1e-12);
    }

    #[test]
    fn clipping_limits_the_norm() {
        let mut g = [3.0, 4.0];
        clip_grad_norm(&mut g, 1.0);
        assert!((g[0] - 0.6).abs() < 1e-6 && (g[1] - 0.8).abs() < 1e-6);
        let mut small = [0.1, 0.2];
        clip_grad_norm(&mut small, 1.0);
        assert_eq!(small, [0.1, 0.2]);
    }
}
