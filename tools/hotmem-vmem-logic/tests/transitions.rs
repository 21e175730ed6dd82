//! The partition state machine: every (state, event) pair, checked against
//! a table written out independently of `transition`.

mod common;

use common::PLAIN_EVENTS;
use hotmem_vmem_logic::partition::{
    transition, DeviceView, Event, InvalidTransition, PartState as S,
};
use hotmem_vmem_logic::wire::{BlockState, ResponseType};

/// Every event.
fn all_events() -> Vec<Event> {
    let mut events = PLAIN_EVENTS.to_vec();
    events.extend(BlockState::ALL.map(Event::StateQueried));
    events
}

/// The valid transitions, as the module documentation lists them.
fn valid() -> Vec<(S, Event, S)> {
    let q = Event::StateQueried;
    let mut table = vec![
        (S::Unplugged, Event::StartPlug, S::Plugging),
        (S::Plugging, Event::PlugAcked, S::Plugged),
        (S::Plugging, Event::PlugNacked, S::Unplugged),
        (S::Plugging, Event::PlugBusy, S::Unplugged),
        (S::Plugging, Event::PlugError, S::Failed),
        (S::Plugged, Event::Onlined, S::Online),
        (S::Plugged, Event::OnlineFailed, S::Plugged),
        (S::Plugged, Event::StartUnplug, S::Unplugging),
        (S::Plugged, Event::FoundAdded, S::Bound),
        (S::Online, Event::KernelBound, S::Bound),
        (S::Online, Event::StartUnplug, S::Offlining),
        (S::Bound, Event::KernelReleased, S::Online),
        (S::Offlining, Event::Offlined, S::Unplugging),
        (S::Offlining, Event::OfflineBusy, S::Online),
        (S::Unplugging, Event::UnplugAcked, S::Unplugged),
        (S::Unplugging, Event::UnplugNacked, S::Plugged),
        (S::Unplugging, Event::UnplugBusy, S::Plugged),
        (S::Unplugging, Event::UnplugError, S::Failed),
    ];
    for from in [S::Unplugged, S::Plugged, S::Failed] {
        table.push((from, q(BlockState::Plugged), S::Plugged));
        table.push((from, q(BlockState::Unplugged), S::Unplugged));
        table.push((from, q(BlockState::Mixed), S::Failed));
    }
    table
}

#[test]
fn every_pair() {
    let valid = valid();
    let mut checked = 0;
    for from in S::ALL {
        for event in all_events() {
            let expected = valid
                .iter()
                .find(|(f, e, _)| *f == from && *e == event)
                .map(|&(_, _, to)| to)
                .ok_or(InvalidTransition { from, event });
            assert_eq!(transition(from, event), expected, "{from} + {event:?}");
            checked += 1;
        }
    }
    assert_eq!(checked, 8 * 20);
    assert_eq!(valid.len(), 27);
}

#[test]
fn invalid_samples() {
    let cases = [
        (S::Unplugged, Event::PlugAcked),
        (S::Unplugged, Event::StartUnplug),
        (S::Plugging, Event::StartPlug),
        (S::Plugging, Event::UnplugAcked),
        (S::Plugged, Event::KernelBound),
        (S::Online, Event::Onlined),
        (S::Online, Event::StateQueried(BlockState::Plugged)),
        (S::Bound, Event::StartUnplug),
        (S::Bound, Event::KernelBound),
        (S::Offlining, Event::KernelBound),
        (S::Unplugging, Event::StartUnplug),
        (S::Unplugging, Event::StateQueried(BlockState::Unplugged)),
        (S::Failed, Event::StartPlug),
        (S::Failed, Event::StartUnplug),
    ];
    for (from, event) in cases {
        let err = transition(from, event).unwrap_err();
        assert_eq!(err, InvalidTransition { from, event });
        assert!(err.to_string().contains(from.name()), "{err}");
    }
}

#[test]
fn state_properties() {
    use DeviceView::*;
    // (state, device view, memory added, request in flight)
    let table = [
        (S::Unplugged, Unplugged, false, false),
        (S::Plugging, Unplugged, false, true),
        (S::Plugged, Plugged, false, false),
        (S::Online, Plugged, true, false),
        (S::Bound, Plugged, true, false),
        (S::Offlining, Plugged, true, false),
        (S::Unplugging, Plugged, false, true),
        (S::Failed, Unknown, false, false),
    ];
    assert_eq!(S::ALL.to_vec(), table.map(|t| t.0).to_vec());
    for (state, view, added, in_flight) in table {
        assert_eq!(state.device_view(), view, "{state}");
        assert_eq!(state.memory_added(), added, "{state}");
        assert_eq!(state.request_in_flight(), in_flight, "{state}");
        assert_eq!(state.is_quiescent(), !added && !in_flight, "{state}");
        assert_eq!(state.to_string(), state.name());
    }
    assert_eq!(S::default(), S::Unplugged);
    let mut names: Vec<_> = S::ALL.iter().map(|s| s.name()).collect();
    names.sort_unstable();
    names.dedup();
    assert_eq!(names.len(), 8);
}

#[test]
fn events_from_responses() {
    let table = [
        (ResponseType::Ack, Event::PlugAcked, Event::UnplugAcked),
        (ResponseType::Nack, Event::PlugNacked, Event::UnplugNacked),
        (ResponseType::Busy, Event::PlugBusy, Event::UnplugBusy),
        (ResponseType::Error, Event::PlugError, Event::UnplugError),
    ];
    for (response, plug, unplug) in table {
        assert_eq!(Event::plug_response(response), plug);
        assert_eq!(Event::unplug_response(response), unplug);
    }
}

#[test]
fn failed_requests_keep_the_device_view() {
    // A PLUG that was not ACKed leaves the partition unplugged; an UNPLUG
    // that was not ACKed leaves it plugged (ERROR: unknown until STATE).
    for response in [ResponseType::Nack, ResponseType::Busy] {
        let after = transition(S::Plugging, Event::plug_response(response)).unwrap();
        assert_eq!(after.device_view(), DeviceView::Unplugged);
        let after = transition(S::Unplugging, Event::unplug_response(response)).unwrap();
        assert_eq!(after, S::Plugged);
        assert_eq!(after.device_view(), DeviceView::Plugged);
    }
}
