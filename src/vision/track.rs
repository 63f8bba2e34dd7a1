//! Face tracking across frames: a face id stays with a face while its box keeps overlapping
//! (greedy IoU matching, best pairs first), so the daemon can smooth per face and the CoT
//! stage can explain a face once per label change. Bounded: at most `max_tracks` live
//! tracks, a track is forgotten after `max_missed` frames without a match. No allocation
//! once warm (fixed-capacity vectors reused frame to frame).

use super::detector::iou_xywh;

/// Tracker settings.
#[derive(Debug, Clone, Copy)]
pub struct TrackerConfig {
    /// Minimum IoU between a track's last box and a new box to continue the track.
    pub min_iou: f32,
    /// Frames a track survives without a match (a blink of the detector, a hand passing).
    pub max_missed: u32,
    /// Live tracks kept at most (the oldest unmatched is dropped first).
    pub max_tracks: usize,
}

impl Default for TrackerConfig {
    fn default() -> Self {
        TrackerConfig {
            min_iou: 0.3,
            max_missed: 15,
            max_tracks: 16,
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Track {
    id: u32,
    bbox: [f32; 4],
    missed: u32,
}

/// Assigns ids to the boxes of consecutive frames.
#[derive(Debug)]
pub struct Tracker {
    cfg: TrackerConfig,
    tracks: Vec<Track>,
    next_id: u32,
    pairs: Vec<(f32, u16, u16)>,
    matched_track: Vec<bool>,
}

impl Tracker {
    pub fn new(cfg: TrackerConfig) -> Self {
        let cap = cfg.max_tracks.max(1);
        Tracker {
            cfg,
            tracks: Vec::with_capacity(cap + 32),
            next_id: 1,
            pairs: Vec::with_capacity(cap * 32),
            matched_track: Vec::with_capacity(cap + 32),
        }
    }

    /// One frame's boxes (`[x, y, w, h]`, pixels) → one id per box in `ids` (same order).
    /// New faces get fresh ids (from 1, never reused while the process runs).
    pub fn update(&mut self, boxes: &[[f32; 4]], ids: &mut Vec<u32>) {
        ids.clear();
        ids.resize(boxes.len(), 0);
        self.pairs.clear();
        for (t, tr) in self.tracks.iter().enumerate() {
            for (b, bx) in boxes.iter().enumerate() {
                let v = iou_xywh(tr.bbox, *bx);
                if v >= self.cfg.min_iou && t < u16::MAX as usize && b < u16::MAX as usize {
                    self.pairs.push((v, t as u16, b as u16));
                }
            }
        }
        self.pairs.sort_by(|a, b| b.0.total_cmp(&a.0));
        self.matched_track.clear();
        self.matched_track.resize(self.tracks.len(), false);
        for &(_, t, b) in &self.pairs {
            let (t, b) = (t as usize, b as usize);
            if self.matched_track[t] || ids[b] != 0 {
                continue;
            }
            self.matched_track[t] = true;
            ids[b] = self.tracks[t].id;
            self.tracks[t].bbox = boxes[b];
            self.tracks[t].missed = 0;
        }
        for (t, m) in self.matched_track.iter().enumerate() {
            if !m {
                self.tracks[t].missed += 1;
            }
        }
        let max_missed = self.cfg.max_missed;
        self.tracks.retain(|t| t.missed <= max_missed);
        for (b, id) in ids.iter_mut().enumerate() {
            if *id == 0 {
                *id = self.next_id;
                self.next_id = self.next_id.wrapping_add(1).max(1);
                self.tracks.push(Track {
                    id: *id,
                    bbox: boxes[b],
                    missed: 0,
                });
            }
        }
        // Over the cap: drop the most-missed tracks (never ones seen this frame first).
        while self.tracks.len() > self.cfg.max_tracks {
            let worst = (0..self.tracks.len())
                .max_by_key(|&k| self.tracks[k].missed)
                .unwrap_or(0);
            self.tracks.swap_remove(worst);
        }
    }

    /// Live tracks (for tests and status).
    pub fn live(&self) -> usize {
        self.tracks.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_follow_moving_faces_and_new_faces_get_new_ids() {
        let mut t = Tracker::new(TrackerConfig::default());
        let mut ids = Vec::new();
        t.update(&[[0.0, 0.0, 10.0, 10.0], [50.0, 0.0, 10.0, 10.0]], &mut ids);
        assert_eq!(ids, [1, 2]);
        // Both moved a little, order swapped.
        t.update(&[[52.0, 1.0, 10.0, 10.0], [1.0, 1.0, 10.0, 10.0]], &mut ids);
        assert_eq!(ids, [2, 1]);
        // A third face appears, the first leaves.
        t.update(
            &[[53.0, 1.0, 10.0, 10.0], [100.0, 100.0, 20.0, 20.0]],
            &mut ids,
        );
        assert_eq!(ids, [2, 3]);
    }

    #[test]
    fn a_face_missing_for_a_few_frames_keeps_its_id_then_loses_it() {
        let cfg = TrackerConfig {
            max_missed: 2,
            ..Default::default()
        };
        let mut t = Tracker::new(cfg);
        let mut ids = Vec::new();
        let b = [[0.0, 0.0, 10.0, 10.0]];
        t.update(&b, &mut ids);
        t.update(&[], &mut ids);
        t.update(&[], &mut ids);
        t.update(&b, &mut ids);
        assert_eq!(ids, [1]);
        for _ in 0..3 {
            t.update(&[], &mut ids);
        }
        assert_eq!(t.live(), 0);
        t.update(&b, &mut ids);
        assert_eq!(ids, [2]);
    }

    #[test]
    fn tracks_are_bounded() {
        let cfg = TrackerConfig {
            max_tracks: 4,
            ..Default::default()
        };
        let mut t = Tracker::new(cfg);
        let mut ids = Vec::new();
        for f in 0..100 {
            let boxes: Vec<[f32; 4]> = (0..3)
                .map(|k| [(f * 3 + k) as f32 * 100.0, 0.0, 10.0, 10.0])
                .collect();
            t.update(&boxes, &mut ids);
            assert!(t.live() <= 4);
        }
        // Two boxes overlapping one track: only the better match continues it.
        let mut t = Tracker::new(TrackerConfig::default());
        t.update(&[[0.0, 0.0, 10.0, 10.0]], &mut ids);
        t.update(&[[3.0, 0.0, 10.0, 10.0], [1.0, 0.0, 10.0, 10.0]], &mut ids);
        assert_eq!(ids, [2, 1]);
    }
}
