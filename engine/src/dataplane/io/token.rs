//! Operation tokens: what a completion belongs to.
//!
//! Every submitted operation carries a [`Token`] (in io_uring's `user_data`), saying what
//! completed (the kind of operation and the index of the object it belongs to), so the shard can
//! dispatch a completion without any lookup table of in-flight operations.

/// What a completion belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum Op {
    /// The multishot UDP receive.
    UdpRecv = 1,
    /// A UDP send from send slot `index`.
    UdpSend,
    /// The multishot accept on listener `index`.
    Accept,
    /// A TCP receive for connection `index`.
    TcpRecv,
    /// A TCP send for connection `index`.
    TcpSend,
    /// An outbound connect for connection `index`.
    Connect,
    /// The timeout linked to that connect.
    ConnectTimeout,
    /// A cancellation of connection `index`'s operations.
    Cancel,
    /// The read of the control eventfd.
    Wake,
    /// A cancellation of listener `index`'s accept (the listener's map was removed by a
    /// reload); the accept's own completion says when the listener may close.
    CancelAccept,
    /// The multishot receive on UDP map listener `index`.
    UdpMapRecv,
    /// The multishot receive on UDP flow `index`'s socket to its target.
    UdpFlowRecv,
    /// A cancellation of UDP flow `index`'s receive (the flow is closing).
    UdpFlowCancel,
    /// A cancellation of UDP map listener `index`'s receive (a reload removed its map).
    UdpMapCancel,
}

impl Op {
    fn from_u8(value: u8) -> Option<Self> {
        Some(match value {
            1 => Self::UdpRecv,
            2 => Self::UdpSend,
            3 => Self::Accept,
            4 => Self::TcpRecv,
            5 => Self::TcpSend,
            6 => Self::Connect,
            7 => Self::ConnectTimeout,
            8 => Self::Cancel,
            9 => Self::Wake,
            10 => Self::CancelAccept,
            11 => Self::UdpMapRecv,
            12 => Self::UdpFlowRecv,
            13 => Self::UdpFlowCancel,
            14 => Self::UdpMapCancel,
            _ => return None,
        })
    }
}

/// `user_data` of an operation: the operation, an object index and that object's generation
/// (so a completion for a slot that was freed and reused is recognised as stale).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Token {
    pub(crate) op: Op,
    pub(crate) index: u32,
    pub(crate) generation: u32,
}

impl Token {
    pub(crate) fn new(op: Op, index: usize, generation: u32) -> Self {
        debug_assert!(index < 1 << 24, "object indices fit in 24 bits");
        Self {
            op,
            index: index as u32 & 0x00ff_ffff,
            generation,
        }
    }

    pub(crate) fn to_user_data(self) -> u64 {
        (self.op as u64) << 56 | u64::from(self.index) << 32 | u64::from(self.generation)
    }

    pub(crate) fn from_user_data(data: u64) -> Option<Self> {
        Some(Self {
            op: Op::from_u8((data >> 56) as u8)?,
            index: ((data >> 32) & 0x00ff_ffff) as u32,
            generation: data as u32,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_round_trip() {
        for op in [
            Op::UdpRecv,
            Op::TcpSend,
            Op::Wake,
            Op::Cancel,
            Op::CancelAccept,
            Op::UdpMapRecv,
            Op::UdpFlowRecv,
            Op::UdpFlowCancel,
            Op::UdpMapCancel,
        ] {
            let token = Token::new(op, 0x12_3456, 0xdead_beef);
            assert_eq!(Token::from_user_data(token.to_user_data()), Some(token));
        }
        assert_eq!(Token::from_user_data(0), None);
    }
}
