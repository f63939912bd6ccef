//! HTTP handlers: authenticate, validate, then either a cached read through
//! `Cache::get_or_load` or a write whose result is reached through `Cache::commit`
//! (which invalidates what `cache_rules` says the write touched).
//! Every route under a conversation id looks the conversation up by id *and*
//! owner, so another user's conversation is a 404 everywhere.

use actix_web::http::header::LOCATION;
use actix_web::{HttpRequest, HttpResponse, web};
use kai_http::auth::{AuthUser, Owned};
use kai_http::openapi::BearerAuth;
use kai_http::{ApiError, FieldError};
use kai_http::{Json, Query, Valid, in_range, respond};
use kai_platform::Platform;
use utoipa::OpenApi;

use crate::assistant;
use crate::cache_rules::{DETAIL, LIST, detail_key, list_key, user_scope};
use crate::limits::Limits;
use crate::llm::Llm;
use crate::model::{
    BatchInserted, BatchMessage, BatchRequest, ConversationDetail, ConversationPage,
    ConversationSummary, CreateConversation, DetailQuery, Exchange, LastMessage, ListQuery,
    MAX_BATCH_BODY_BYTES, Message, PostMessage, Role,
};
use crate::queries;

#[derive(OpenApi)]
#[openapi(
    info(title = "Kai conversation-service", description = "Conversations with the assistant, their messages, and LLM replies through the AI-response cache."),
    paths(create_conversation, list_conversations, get_conversation, delete_conversation, post_message, post_batch, crate::export::export_conversations),
    components(schemas(ConversationSummary, ConversationDetail, ConversationPage, LastMessage, Message, CreateConversation, PostMessage, Exchange, BatchRequest, BatchMessage, BatchInserted, Role, crate::export::ExportedConversation, kai_http::errors::Problem, FieldError)),
    modifiers(&BearerAuth),
    security(("bearer" = [])),
    tags((name = "conversations", description = "Conversations with the assistant"),
         (name = "messages", description = "Messages, the assistant's replies, imports"))
)]
pub struct ApiDoc;

pub fn configure(cfg: &mut web::ServiceConfig, llm: web::Data<Llm>, limits: web::Data<Limits>) {
    cfg.service(
        web::scope("/api/conversations")
            .app_data(llm)
            .app_data(limits)
            .service(
                // GET first (see journal's routes: one method guard for a read).
                web::resource("")
                    .route(web::get().to(list_conversations))
                    .route(web::post().to(create_conversation)),
            )
            // Before `/{id}`, which would otherwise take "export" for an id.
            .service(
                web::resource("/export").route(web::get().to(crate::export::export_conversations)),
            )
            .service(
                web::resource("/{id}")
                    .route(web::get().to(get_conversation))
                    .route(web::delete().to(delete_conversation)),
            )
            .service(web::resource("/{id}/messages").route(web::post().to(post_message)))
            .service(web::resource("/{id}/messages/batch").route(web::post().to(post_batch))),
    );
}

/// Start a conversation.
#[utoipa::path(post, path = "/api/conversations", tag = "conversations", request_body = CreateConversation,
    responses((status = 201, description = "The conversation; `Location` is its URL", body = ConversationSummary),
        (status = 429, description = "Too many conversations created by this user (`CREATES_PER_MINUTE`)", body = kai_http::errors::Problem)))]
async fn create_conversation(
    p: web::Data<Platform>,
    limits: web::Data<Limits>,
    user: AuthUser,
    new: Valid<CreateConversation>,
) -> Result<HttpResponse, ApiError> {
    limits.create(&p, user.user_id).await?;
    let written = queries::insert_conversation(&p.db, user.user_id, &new).await?;
    let conversation = p.cache.commit(written).await;
    Ok(HttpResponse::Created()
        .insert_header((LOCATION, format!("/api/conversations/{}", conversation.id)))
        .json(conversation))
}

/// List conversations, most recently updated first, with message counts and
/// last messages (one SQL statement per page).
#[utoipa::path(get, path = "/api/conversations", tag = "conversations", params(ListQuery),
    responses((status = 200, body = ConversationPage), (status = 304)))]
async fn list_conversations(
    req: HttpRequest,
    p: web::Data<Platform>,
    AuthUser { user_id: uid, .. }: AuthUser,
    Query(q): Query<ListQuery>,
) -> Result<HttpResponse, ApiError> {
    let cq = p.cursor_query(uid, q.limit, q.cursor.as_deref())?;
    let key = list_key(uid, q.cursor.as_deref(), cq.limit);
    let cached = p
        .cache
        .get_or_load(&user_scope(uid), &LIST, &key, || async {
            queries::list_conversations(&p.db, uid, &cq).await.map(Some)
        })
        .await?;
    Ok(respond::cached(&req, &cached))
}

/// One conversation with its latest messages, oldest first.
#[utoipa::path(get, path = "/api/conversations/{id}", tag = "conversations", params(("id" = Uuid, Path, description = "The conversation's id"), DetailQuery),
    responses((status = 200, body = ConversationDetail), (status = 304)))]
async fn get_conversation(
    req: HttpRequest,
    p: web::Data<Platform>,
    it: Owned,
    q: Query<DetailQuery>,
) -> Result<HttpResponse, ApiError> {
    let Owned { user_id: uid, id } = it;
    let limit = in_range("limit", q.limit, 50, 1, 200)?;
    let cached = p
        .cache
        .get_or_load(
            &user_scope(uid),
            &DETAIL,
            &detail_key(id, limit),
            || async {
                let found = queries::get_conversation(&p.db, uid, id, limit).await;
                found.map(|found| found.map(|(s, messages)| ConversationDetail::new(s, messages)))
            },
        )
        .await?;
    Ok(respond::cached(&req, &cached))
}

/// Delete a conversation and its messages.
#[utoipa::path(delete, path = "/api/conversations/{id}", tag = "conversations", params(("id" = Uuid, Path, description = "The conversation's id")),
    responses((status = 204)))]
async fn delete_conversation(p: web::Data<Platform>, it: Owned) -> Result<HttpResponse, ApiError> {
    let written = queries::delete_conversation(&p.db, it.user_id, it.id).await?;
    respond::deleted(p.cache.commit(written).await)
}

/// Send a message; the assistant replies (from the AI-response cache when the
/// same message was sent before). If the model fails, the message is kept and
/// the answer is 502 (or 504 on timeout).
#[utoipa::path(post, path = "/api/conversations/{id}/messages", tag = "messages", params(("id" = Uuid, Path, description = "The conversation's id")), request_body = PostMessage,
    responses((status = 201, description = "Both messages, stored; `Location` is the conversation", body = Exchange),
        (status = 429, description = "Too many messages by this user: a burst (`ASSISTANT_MESSAGE_BURST`), then a steady rate (`ASSISTANT_MESSAGES_PER_MINUTE`), and a daily budget (`ASSISTANT_MESSAGES_PER_DAY`); nothing is stored", body = kai_http::errors::Problem),
        (status = 502), (status = 504)))]
async fn post_message(
    p: web::Data<Platform>,
    llm: web::Data<Llm>,
    limits: web::Data<Limits>,
    it: Owned,
    msg: Valid<PostMessage>,
) -> Result<HttpResponse, ApiError> {
    let Owned { user_id: uid, id } = it;
    // Each message may cost an LLM call: limited per user before anything is stored.
    limits.message(&p, uid).await?;
    // Visible at once (committed before the model is asked): the model may fail
    // or the client may leave, and the message is stored either way.
    let written = queries::append_message(&p.db, uid, id, "user", &msg.content).await?;
    let user_message = p.cache.commit_found(written).await?;

    let reply = assistant::reply(
        &p,
        &llm,
        uid,
        msg.communication_style.as_deref(),
        &msg.content,
    )
    .await?;
    let written = queries::append_message(&p.db, uid, id, "assistant", &reply.content).await?;
    let assistant_message = p.cache.commit_found(written).await?;
    Ok(HttpResponse::Created()
        .insert_header((LOCATION, format!("/api/conversations/{id}")))
        .json(Exchange {
            user_message,
            assistant_message,
            cached: reply.cached,
        }))
}

/// Import up to 1,000 messages at once: all or none, in one INSERT.
#[utoipa::path(post, path = "/api/conversations/{id}/messages/batch", tag = "messages", params(("id" = Uuid, Path, description = "The conversation's id")), request_body = BatchRequest,
    responses((status = 201, description = "How many messages were stored; `Location` is the conversation", body = BatchInserted),
        (status = 429, description = "Too many imports by this user (`IMPORTS_PER_MINUTE`)", body = kai_http::errors::Problem)))]
async fn post_batch(
    p: web::Data<Platform>,
    limits: web::Data<Limits>,
    it: Owned,
    body: Json<BatchRequest, MAX_BATCH_BODY_BYTES>,
) -> Result<HttpResponse, ApiError> {
    let batch = Valid::parse(body.into_inner())?;
    let Owned { user_id: uid, id } = it;
    limits.import(&p, uid).await?;
    let written = queries::insert_batch(&p.db, uid, id, &batch).await?;
    let inserted = p.cache.commit_found(written).await?;
    Ok(HttpResponse::Created()
        .insert_header((LOCATION, format!("/api/conversations/{id}")))
        .json(BatchInserted { inserted }))
}
