//! Publishers joining and leaving a recorder: each (userId, type) is routed to its stream (the
//! connected one, one within its reconnect grace, or a new one), opened over plain RTP or WHIP.

use super::*;

impl Handler<Publish> for Recorder {
    type Result = ResponseActFuture<Self, Result<PublishAnswer, EngineError>>;

    fn handle(&mut self, msg: Publish, ctx: &mut Self::Context) -> Self::Result {
        match self.guarded(ctx, "Publish", |act, ctx| act.publish(msg, ctx)) {
            Some(publishing) => publishing,
            None => Box::pin(fut::ready(Err(restarting()))),
        }
    }
}
impl Recorder {
    pub(super) fn publish(
        &mut self,
        msg: Publish,
        ctx: &mut Context<Self>,
    ) -> ResponseActFuture<Self, Result<PublishAnswer, EngineError>> {
        if self.is_stopping() || self.state.is_terminal() {
            self.num_publishes_refused += 1;
            return Box::pin(fut::ready(Err(EngineError::conflict(
                "the recorder instance is stopping",
            ))));
        }
        let offer = match msg.transport {
            IngestTransport::Rtp => match crate::media::sdp::parse_offer(&msg.offer_sdp) {
                Ok(offer) => Some(offer),
                Err(e) => {
                    self.num_publishes_refused += 1;
                    return Box::pin(fut::ready(Err(media_error(e.into()))));
                }
            },
            IngestTransport::Whip => None,
        };
        let role = msg.role;
        let (at, created) = match self.stream_for(&msg.user_id, msg.kind, role, ctx) {
            Ok(found) => found,
            Err(err) => {
                self.num_publishes_refused += 1;
                return Box::pin(fut::ready(Err(err)));
            }
        };
        let entry = &self.streams[at];
        let stream = entry.mailbox.clone();
        let stream_id = entry.id.clone();
        let session_id = uuid::Uuid::new_v4().simple().to_string();
        let (audio, video) = (self.audio, self.video);
        let sid = session_id.clone();
        let opening = async move {
            let opened: Result<OpenedSession, MediaError> = match offer {
                Some(offer) => {
                    stream
                        .send(OpenRtp {
                            session_id: sid,
                            permit: msg.permit,
                            any_source: msg.rtp_any_source,
                            offer,
                            audio,
                            video,
                        })
                        .await?
                }
                None => {
                    stream
                        .send(OpenWhip {
                            session_id: sid,
                            permit: msg.permit,
                            offer_sdp: msg.offer_sdp,
                            audio,
                            video,
                        })
                        .await?
                }
            };
            opened.map_err(media_error)
        };
        let store = self.store.clone();
        let instance_id = self.instance_id.clone();
        let continuation = opening.into_actor(self).then(move |opened, act, _ctx| {
            // The handler's continuation is supervised too (see `supervision::Guarded`).
            act.continuation_point("Publish");
            let result = opened.and_then(|opened| {
                if act.is_stopping() {
                    // The stop began while this publisher was being answered: the stop owns
                    // the record now (its stream was finished with the others).
                    return Err(EngineError::conflict("the recorder instance is stopping"));
                }
                store.update_instance(&instance_id, &mut |r| {
                    merge_stream(r, &opened.record);
                    // A role declared by a publisher that continues a stream opened without one.
                    if let Some(stream) = r.streams.iter_mut().find(|s| s.id == stream_id) {
                        stream.role = stream.role.or(role);
                    }
                    Ok(())
                })?;
                Ok(opened)
            });
            match &result {
                Ok(_) => {
                    act.num_publishes += 1;
                    if let Some(entry) = act.streams.iter_mut().find(|s| s.id == stream_id) {
                        entry.link = entry.link.connected();
                        entry.sessions.push(session_id.clone());
                    }
                }
                Err(_) => {
                    act.num_publishes_refused += 1;
                    if created {
                        // Nothing was recorded on it: drop the stream (its actor ends with the
                        // last address).
                        act.streams.retain(|s| s.id != stream_id);
                    }
                }
            }
            let flush = store.flush();
            async move {
                let opened = result?;
                flush.await?;
                Ok(PublishAnswer {
                    session_id,
                    answer_sdp: opened.answer_sdp,
                    instance_id,
                    stream_id,
                })
            }
            .into_actor(act)
        });
        Box::pin(supervision::guard("Publish", Box::pin(continuation), Err(restarting())))
    }
}
impl Handler<Unpublish> for Recorder {
    type Result = ResponseFuture<Result<(), EngineError>>;

    fn handle(&mut self, msg: Unpublish, ctx: &mut Self::Context) -> Self::Result {
        let session_id = msg.session_id.clone();
        let Some(stream) = self.guarded(ctx, "Unpublish", |act, _ctx| {
            act.streams
                .iter()
                .find(|s| s.sessions.contains(&session_id))
                .map(|s| s.mailbox.clone())
        }) else {
            return Box::pin(fut::ready(Err(restarting())));
        };
        Box::pin(async move {
            let missing = || EngineError::not_found(format!("no live publisher session {}", msg.session_id));
            let stream = stream.ok_or_else(missing)?;
            if stream
                .send(EndSession {
                    session_id: msg.session_id.clone(),
                })
                .await?
            {
                Ok(())
            } else {
                Err(missing())
            }
        })
    }
}
impl Recorder {
    /// The stream a publisher of (userId, type) continues: the connected one, or one that lost
    /// its connection within the grace period. Otherwise a new stream.
    pub(super) fn stream_for(
        &mut self,
        user_id: &str,
        kind: StreamType,
        role: Option<ParticipantRole>,
        ctx: &mut Context<Self>,
    ) -> Result<(usize, bool), EngineError> {
        let grace = self.media.reconnect_grace;
        let now = self.media.clock.now();
        let streams = self.streams.iter().map(|s| (s.user_id.as_str(), s.kind, s.link));
        if let Route::Continue(at) = route_publisher(streams, user_id, kind, now, grace) {
            return Ok((at, false));
        }
        if self.streams.len() >= self.max_streams {
            return Err(EngineError::limit(
                "max_streams_per_instance",
                format!("the recorder instance has {} streams already", self.streams.len()),
            ));
        }
        let id = uuid::Uuid::new_v4().simple().to_string();
        let record = StreamRecord {
            role,
            ..StreamRecord::new(id.clone(), user_id, kind)
        };
        let (stream, quiesce) = self.new_stream(record, false, ctx);
        self.streams.push(StreamEntry {
            id,
            user_id: user_id.to_string(),
            kind,
            mailbox: Mailbox::new(stream.start()),
            sessions: Vec::new(),
            link: StreamLink::Opening,
            restarts: 0,
            restart_times: VecDeque::new(),
            quiesce,
        });
        Ok((self.streams.len() - 1, true))
    }
}
