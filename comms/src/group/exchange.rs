//! The naive exchange `launch bench allreduce` measures the all-reduce against: every member
//! sends its whole payload to every other.

use libp2p::PeerId;

use super::messages::{Header, Stage};
use super::{Group, GroupError};

impl Group {
    /// The naive exchange the all-reduce is measured against: this peer sends its whole
    /// `payload` to every other member and waits for theirs ((N−1) payloads each way instead
    /// of about 2(N−1)/N). Returns the members' payloads in member order and the bytes sent.
    pub async fn exchange(
        &self,
        round: u64,
        members: &[PeerId],
        payload: &[u8],
    ) -> Result<(Vec<Vec<u8>>, u64), GroupError> {
        let me = self.me();
        let index = members.iter().position(|m| *m == me).expect("a member");
        let header = Header::Shard {
            run: self.shared.settings.run.clone(),
            round,
            group: super::formation::group_key(round, members),
            shard: index as u32,
            stage: Stage::Contribution,
            contributors: Vec::new(),
        };
        let sends = members
            .iter()
            .filter(|m| **m != me)
            .map(|m| self.deliver(*m, &header, payload));
        let mut sent = 0;
        for result in futures::future::join_all(sends).await {
            sent += result?;
        }
        let ceiling = self.shared.settings.round_ceiling;
        let got = self
            .wait_for(ceiling, |_, state| {
                members
                    .iter()
                    .enumerate()
                    .map(|(k, m)| match *m == me {
                        true => Some(payload.to_vec()),
                        false => state
                            .shards
                            .get(&(round, Stage::Contribution, k as u32))
                            .and_then(|g| g.get(m))
                            .map(|a| a.frame.clone()),
                    })
                    .collect::<Option<Vec<_>>>()
            })
            .await
            .ok_or(GroupError::Deadline {
                round,
                what: "the members' payloads".into(),
                secs: ceiling.as_secs(),
            })?;
        let mut state = self.shared.lock();
        state.completed = Some(round);
        state.shards.retain(|(r, _, _), _| *r > round);
        Ok((got, sent))
    }
}
