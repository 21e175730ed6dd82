//! Byte-exact encoding and decoding of the virtio-mem wire format against
//! the layouts of `include/uapi/linux/virtio_mem.h`.

use hotmem_vmem_logic::wire::*;

const ADDR: u64 = 0x1122_3344_5566_7788;
const ADDR_LE: [u8; 8] = [0x88, 0x77, 0x66, 0x55, 0x44, 0x33, 0x22, 0x11];

fn range() -> BlockRange {
    BlockRange {
        addr: ADDR,
        nb_blocks: 0xa1b2,
    }
}

/// The 24 request bytes for `type_` with the payload of [`range`].
fn request_bytes(type_: u16) -> [u8; REQUEST_SIZE] {
    let mut b = [0u8; REQUEST_SIZE];
    b[0..2].copy_from_slice(&type_.to_le_bytes());
    b[8..16].copy_from_slice(&ADDR_LE);
    b[16..18].copy_from_slice(&[0xb2, 0xa1]);
    b
}

#[test]
fn raw_values_match_the_linux_header() {
    assert_eq!(VIRTIO_MEM_F_ACPI_PXM, 0);
    assert_eq!(VIRTIO_MEM_F_UNPLUGGED_INACCESSIBLE, 1);
    assert_eq!(VIRTIO_MEM_F_PERSISTENT_SUSPEND, 2);
    assert_eq!(VIRTIO_MEM_REQ_PLUG, 0);
    assert_eq!(VIRTIO_MEM_REQ_UNPLUG, 1);
    assert_eq!(VIRTIO_MEM_REQ_UNPLUG_ALL, 2);
    assert_eq!(VIRTIO_MEM_REQ_STATE, 3);
    assert_eq!(VIRTIO_MEM_RESP_ACK, 0);
    assert_eq!(VIRTIO_MEM_RESP_NACK, 1);
    assert_eq!(VIRTIO_MEM_RESP_BUSY, 2);
    assert_eq!(VIRTIO_MEM_RESP_ERROR, 3);
    assert_eq!(VIRTIO_MEM_STATE_PLUGGED, 0);
    assert_eq!(VIRTIO_MEM_STATE_UNPLUGGED, 1);
    assert_eq!(VIRTIO_MEM_STATE_MIXED, 2);
    assert_eq!(REQUEST_SIZE, 24);
    assert_eq!(RESPONSE_HEADER_SIZE, 8);
    assert_eq!(RESPONSE_SIZE, 10);
    assert_eq!(CONFIG_SIZE, 56);
}

#[test]
fn features() {
    let expected = [
        (Feature::AcpiPxm, 0, 0b001),
        (Feature::UnpluggedInaccessible, 1, 0b010),
        (Feature::PersistentSuspend, 2, 0b100),
    ];
    assert_eq!(Feature::ALL.len(), expected.len());
    for (feature, bit, mask) in expected {
        assert_eq!(feature.bit(), bit);
        assert_eq!(feature.mask(), mask);
        assert!(feature.is_set_in(mask));
        assert!(feature.is_set_in(u64::MAX));
        assert!(!feature.is_set_in(0));
        assert!(!feature.is_set_in(!mask));
    }
}

#[test]
fn enum_raw_values_round_trip_exhaustively() {
    for raw in 0..=u16::MAX {
        match RequestType::from_raw(raw) {
            Ok(t) => assert_eq!(t.to_raw(), raw),
            Err(e) => {
                assert!(raw > 3);
                assert_eq!(e, DecodeError::UnknownRequestType(raw));
            }
        }
        match ResponseType::from_raw(raw) {
            Ok(t) => assert_eq!(t.to_raw(), raw),
            Err(e) => {
                assert!(raw > 3);
                assert_eq!(e, DecodeError::UnknownResponseType(raw));
            }
        }
        match BlockState::from_raw(raw) {
            Ok(s) => assert_eq!(s.to_raw(), raw),
            Err(e) => {
                assert!(raw > 2);
                assert_eq!(e, DecodeError::UnknownBlockState(raw));
            }
        }
    }
    let raws = |v: &[u16]| v.to_vec();
    assert_eq!(
        raws(&RequestType::ALL.map(RequestType::to_raw)),
        [0, 1, 2, 3]
    );
    assert_eq!(
        raws(&ResponseType::ALL.map(ResponseType::to_raw)),
        [0, 1, 2, 3]
    );
    assert_eq!(raws(&BlockState::ALL.map(BlockState::to_raw)), [0, 1, 2]);
}

#[test]
fn requests_encode_byte_exact() {
    let cases = [
        (Request::Plug(range()), request_bytes(0)),
        (Request::Unplug(range()), request_bytes(1)),
        (Request::State(range()), request_bytes(3)),
        (Request::UnplugAll, {
            let mut b = [0u8; REQUEST_SIZE];
            b[0] = 2;
            b
        }),
    ];
    for (request, bytes) in cases {
        assert_eq!(request.to_bytes(), bytes, "{request:?}");
        // encode() writes every byte, whatever was in the buffer.
        let mut buf = [0xffu8; REQUEST_SIZE];
        request.encode(&mut buf);
        assert_eq!(buf, bytes, "{request:?}");
        assert_eq!(Request::decode(&bytes), Ok(request));
    }
}

#[test]
fn request_accessors() {
    assert_eq!(Request::Plug(range()).request_type(), RequestType::Plug);
    assert_eq!(Request::Unplug(range()).request_type(), RequestType::Unplug);
    assert_eq!(Request::UnplugAll.request_type(), RequestType::UnplugAll);
    assert_eq!(Request::State(range()).request_type(), RequestType::State);
    assert_eq!(Request::Plug(range()).range(), Some(range()));
    assert_eq!(Request::UnplugAll.range(), None);
}

#[test]
fn request_decode_ignores_padding_and_unplug_all_payload() {
    let mut bytes = request_bytes(0);
    for i in (2..8).chain(18..24) {
        bytes[i] = 0xff;
    }
    assert_eq!(Request::decode(&bytes), Ok(Request::Plug(range())));
    let mut all = request_bytes(2);
    all[3] = 0x5a;
    assert_eq!(Request::decode(&all), Ok(Request::UnplugAll));
}

#[test]
fn request_decode_errors() {
    let bytes = request_bytes(1);
    for len in 0..REQUEST_SIZE {
        assert_eq!(
            Request::decode(&bytes[..len]),
            Err(DecodeError::TooShort {
                needed: REQUEST_SIZE,
                got: len
            })
        );
    }
    // Longer buffers are fine: only the first 24 bytes are read.
    let mut long = [0xeeu8; 40];
    long[..REQUEST_SIZE].copy_from_slice(&bytes);
    assert_eq!(Request::decode(&long), Ok(Request::Unplug(range())));
    for bad in [4u16, 0x100, u16::MAX] {
        assert_eq!(
            Request::decode(&request_bytes(bad)),
            Err(DecodeError::UnknownRequestType(bad))
        );
    }
}

#[test]
fn responses_encode_byte_exact() {
    let cases = [
        (Response::Ack, [0, 0, 0, 0, 0, 0, 0, 0, 0, 0]),
        (Response::Nack, [1, 0, 0, 0, 0, 0, 0, 0, 0, 0]),
        (Response::Busy, [2, 0, 0, 0, 0, 0, 0, 0, 0, 0]),
        (Response::Error, [3, 0, 0, 0, 0, 0, 0, 0, 0, 0]),
        (
            Response::AckState(BlockState::Plugged),
            [0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
        ),
        (
            Response::AckState(BlockState::Unplugged),
            [0, 0, 0, 0, 0, 0, 0, 0, 1, 0],
        ),
        (
            Response::AckState(BlockState::Mixed),
            [0, 0, 0, 0, 0, 0, 0, 0, 2, 0],
        ),
    ];
    for (response, bytes) in cases {
        assert_eq!(response.to_bytes(), bytes, "{response:?}");
        let mut buf = [0xffu8; RESPONSE_SIZE];
        response.encode(&mut buf);
        assert_eq!(buf, bytes, "{response:?}");
    }
}

#[test]
fn response_decode_depends_on_the_request() {
    for state in BlockState::ALL {
        let bytes = Response::AckState(state).to_bytes();
        assert_eq!(
            Response::decode(&bytes, RequestType::State),
            Ok(Response::AckState(state))
        );
        // The state field means nothing in an ACK to anything else.
        for request in [
            RequestType::Plug,
            RequestType::Unplug,
            RequestType::UnplugAll,
        ] {
            assert_eq!(Response::decode(&bytes, request), Ok(Response::Ack));
        }
    }
    for request in RequestType::ALL {
        for (response, raw) in [
            (Response::Nack, 1u8),
            (Response::Busy, 2),
            (Response::Error, 3),
        ] {
            // The header alone is enough, and the state bytes are ignored.
            let header = [raw, 0, 0, 0, 0, 0, 0, 0];
            assert_eq!(Response::decode(&header, request), Ok(response));
            let with_state = [raw, 0, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 7, 7];
            assert_eq!(Response::decode(&with_state, request), Ok(response));
        }
    }
    assert_eq!(
        Response::decode(&[0; 8], RequestType::Plug),
        Ok(Response::Ack)
    );
}

#[test]
fn response_decode_errors() {
    for request in RequestType::ALL {
        for len in 0..RESPONSE_HEADER_SIZE {
            assert_eq!(
                Response::decode(&[0u8; RESPONSE_SIZE][..len], request),
                Err(DecodeError::TooShort {
                    needed: RESPONSE_HEADER_SIZE,
                    got: len
                })
            );
        }
        assert_eq!(
            Response::decode(&[4, 0, 0, 0, 0, 0, 0, 0, 0, 0], request),
            Err(DecodeError::UnknownResponseType(4))
        );
        assert_eq!(
            Response::decode(&[0xff, 0xff, 0, 0, 0, 0, 0, 0], request),
            Err(DecodeError::UnknownResponseType(u16::MAX))
        );
    }
    // An ACK to STATE needs the state field, with a known value.
    for len in [8, 9] {
        assert_eq!(
            Response::decode(&[0u8; 10][..len], RequestType::State),
            Err(DecodeError::TooShort {
                needed: RESPONSE_SIZE,
                got: len
            })
        );
    }
    assert_eq!(
        Response::decode(&[0, 0, 0, 0, 0, 0, 0, 0, 3, 0], RequestType::State),
        Err(DecodeError::UnknownBlockState(3))
    );
    assert_eq!(
        Response::decode(&[0, 0, 0, 0, 0, 0, 0, 0, 0, 1], RequestType::State),
        Err(DecodeError::UnknownBlockState(0x100))
    );
}

#[test]
fn response_types_and_applicability() {
    assert_eq!(Response::Ack.response_type(), ResponseType::Ack);
    assert_eq!(
        Response::AckState(BlockState::Mixed).response_type(),
        ResponseType::Ack
    );
    assert_eq!(Response::Nack.response_type(), ResponseType::Nack);
    assert_eq!(Response::Busy.response_type(), ResponseType::Busy);
    assert_eq!(Response::Error.response_type(), ResponseType::Error);

    use RequestType::*;
    // From the comments in virtio_mem.h.
    let table = [
        (ResponseType::Ack, [true, true, true, true]),
        (ResponseType::Nack, [true, false, false, false]),
        (ResponseType::Busy, [true, true, true, false]),
        (ResponseType::Error, [true, true, false, true]),
    ];
    for (response, applicable) in table {
        for (request, expected) in [Plug, Unplug, UnplugAll, State].into_iter().zip(applicable) {
            assert_eq!(
                response.is_applicable_to(request),
                expected,
                "{response:?} to {request:?}"
            );
        }
    }
}

fn sample_config() -> Config {
    Config {
        block_size: 0x0102_0304_0506_0708,
        node_id: 0x090a,
        addr: 0x1112_1314_1516_1718,
        region_size: 0x2122_2324_2526_2728,
        usable_region_size: 0x3132_3334_3536_3738,
        plugged_size: 0x4142_4344_4546_4748,
        requested_size: 0x5152_5354_5556_5758,
    }
}

fn sample_config_bytes() -> [u8; CONFIG_SIZE] {
    let mut b = [0u8; CONFIG_SIZE];
    let le = |v: u64| v.to_le_bytes();
    b[0..8].copy_from_slice(&le(0x0102_0304_0506_0708));
    b[8..10].copy_from_slice(&[0x0a, 0x09]);
    b[16..24].copy_from_slice(&le(0x1112_1314_1516_1718));
    b[24..32].copy_from_slice(&le(0x2122_2324_2526_2728));
    b[32..40].copy_from_slice(&le(0x3132_3334_3536_3738));
    b[40..48].copy_from_slice(&le(0x4142_4344_4546_4748));
    b[48..56].copy_from_slice(&le(0x5152_5354_5556_5758));
    b
}

#[test]
fn config_encodes_byte_exact() {
    let bytes = sample_config_bytes();
    assert_eq!(bytes[0], 0x08, "little-endian: low byte first");
    assert_eq!(bytes[16], 0x18);
    assert_eq!(sample_config().to_bytes(), bytes);
    let mut buf = [0xffu8; CONFIG_SIZE];
    sample_config().encode(&mut buf);
    assert_eq!(buf, bytes);
    assert_eq!(&buf[10..16], &[0; 6], "padding zeroed");
    assert_eq!(Config::decode(&bytes), Ok(sample_config()));
}

#[test]
fn config_decode_ignores_padding_and_checks_length() {
    let mut bytes = sample_config_bytes();
    bytes[10..16].fill(0xff);
    assert_eq!(Config::decode(&bytes), Ok(sample_config()));
    for len in 0..CONFIG_SIZE {
        assert_eq!(
            Config::decode(&bytes[..len]),
            Err(DecodeError::TooShort {
                needed: CONFIG_SIZE,
                got: len
            })
        );
    }
    let mut long = [0u8; 64];
    long[..CONFIG_SIZE].copy_from_slice(&bytes);
    assert_eq!(Config::decode(&long), Ok(sample_config()));
}

#[test]
fn config_fields_tile_the_layout() {
    use ConfigField::*;
    let fields = [
        (BlockSize, 0, 8, "block_size"),
        (NodeId, 8, 2, "node_id"),
        (Addr, 16, 8, "addr"),
        (RegionSize, 24, 8, "region_size"),
        (UsableRegionSize, 32, 8, "usable_region_size"),
        (PluggedSize, 40, 8, "plugged_size"),
        (RequestedSize, 48, 8, "requested_size"),
    ];
    for (field, offset, width, name) in fields {
        assert_eq!(field.offset(), offset);
        assert_eq!(field.width(), width);
        assert_eq!(field.name(), name);
        assert_eq!(offset % width, 0, "{name} naturally aligned");
    }
    let last = fields[fields.len() - 1];
    assert_eq!(last.1 + last.2, CONFIG_SIZE);
}

#[test]
fn errors_display() {
    let text = DecodeError::TooShort { needed: 24, got: 3 }.to_string();
    assert!(text.contains("24") && text.contains('3'), "{text}");
    assert!(DecodeError::UnknownRequestType(9).to_string().contains('9'));
    assert!(DecodeError::UnknownResponseType(9)
        .to_string()
        .contains('9'));
    assert!(DecodeError::UnknownBlockState(9).to_string().contains('9'));
}

/// The response buffer starts as `Response::UNWRITTEN`: the driver decodes
/// the whole buffer whatever used length the device reports, so a buffer
/// the device did not write must not decode (as ACK, say), and one it wrote
/// decodes although the reported length may be short.
#[test]
fn an_unwritten_response_buffer_never_decodes() {
    for request in [
        RequestType::Plug,
        RequestType::Unplug,
        RequestType::UnplugAll,
        RequestType::State,
    ] {
        assert!(Response::decode(&Response::UNWRITTEN, request).is_err());
        let mut buf = Response::UNWRITTEN;
        Response::Ack.encode(&mut buf);
        assert!(Response::decode(&buf, request).is_ok(), "{request:?}");
    }
}
