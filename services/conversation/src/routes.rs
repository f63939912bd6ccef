//! HTTP handlers: authenticate, validate, then either a cached read through
//! `Cache::get_or_load` or a write followed by the owner's scope invalidation.
//! Every route under a conversation id looks the conversation up by id *and*
//! owner, so another user's conversation is a 404 everywhere.

use actix_web::{HttpRequest, HttpResponse, web};
use kai_shared::auth::AuthUser;
use kai_shared::cache::keys;
use kai_shared::http::openapi::BearerAuth;
use kai_shared::http::{in_range, respond};
use kai_shared::{ApiError, FieldError, Platform};
use utoipa::OpenApi;
use uuid::Uuid;

use crate::assistant;
use crate::cache_rules::{DETAIL, LIST, user_scope};
use crate::llm::Llm;
use crate::model::{
    BatchInserted, BatchMessage, BatchRequest, ConversationDetail, ConversationPage,
    ConversationSummary, CreateConversation, DetailQuery, Exchange, LastMessage, ListQuery,
    Message, PostMessage,
};
use crate::queries;
use kai_shared::http::cursor::Cursor;

#[derive(OpenApi)]
#[openapi(
    info(title = "Kai conversation-service", description = "Conversations with the assistant, their messages, and LLM replies through the AI-response cache."),
    paths(create_conversation, list_conversations, get_conversation, delete_conversation, post_message, post_batch, crate::export::export_conversations),
    components(schemas(ConversationSummary, ConversationDetail, ConversationPage, LastMessage, Message, CreateConversation, PostMessage, Exchange, BatchRequest, BatchMessage, BatchInserted, crate::export::ExportedConversation, kai_shared::http::errors::Problem, FieldError)),
    modifiers(&BearerAuth),
    security(("bearer" = []))
)]
pub struct ApiDoc;

pub fn configure(cfg: &mut web::ServiceConfig, llm: web::Data<Llm>) {
    cfg.service(
        web::scope("/api/conversations")
            .app_data(llm)
            .service(
                web::resource("")
                    .route(web::post().to(create_conversation))
                    .route(web::get().to(list_conversations)),
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
#[utoipa::path(post, path = "/api/conversations", request_body = CreateConversation,
    responses((status = 201, body = ConversationSummary), (status = 400, body = kai_shared::http::errors::Problem), (status = 401), (status = 413), (status = 415)))]
#[tracing::instrument(skip_all, fields(user_id = %user.user_id))]
async fn create_conversation(
    p: web::Data<Platform>,
    user: AuthUser,
    body: web::Json<CreateConversation>,
) -> Result<HttpResponse, ApiError> {
    let mut new = body.into_inner();
    new.validate()?;
    let conversation =
        queries::insert_conversation(&p.db, user.user_id, new.title.as_deref()).await?;
    p.cache.invalidate(&user_scope(user.user_id)).await;
    Ok(HttpResponse::Created().json(conversation))
}

/// List conversations, most recently updated first, with message counts and
/// last messages (one SQL statement per page).
#[utoipa::path(get, path = "/api/conversations", params(ListQuery),
    responses((status = 200, body = ConversationPage), (status = 304), (status = 400), (status = 401)))]
#[tracing::instrument(skip_all, fields(user_id = %user.user_id))]
async fn list_conversations(
    req: HttpRequest,
    p: web::Data<Platform>,
    user: AuthUser,
    q: web::Query<ListQuery>,
) -> Result<HttpResponse, ApiError> {
    let q = q.into_inner();
    let uid = user.user_id;
    let limit = in_range("limit", q.limit, 20, 1, 100)?;
    let cursor = Cursor::from_param(q.cursor.as_deref())?;
    let key = keys::conversation_list(uid, q.cursor.as_deref(), limit);
    let cached = p
        .cache
        .get_or_load(&user_scope(uid), &LIST, &key, || async {
            queries::list_conversations(&p.db, uid, cursor, limit)
                .await
                .map(Some)
        })
        .await?;
    Ok(respond::cached(&req, &cached))
}

/// One conversation with its latest messages, oldest first.
#[utoipa::path(get, path = "/api/conversations/{id}", params(("id" = Uuid, Path), DetailQuery),
    responses((status = 200, body = ConversationDetail), (status = 304), (status = 400), (status = 404), (status = 401)))]
#[tracing::instrument(skip_all, fields(user_id = %user.user_id))]
async fn get_conversation(
    req: HttpRequest,
    p: web::Data<Platform>,
    user: AuthUser,
    id: web::Path<Uuid>,
    q: web::Query<DetailQuery>,
) -> Result<HttpResponse, ApiError> {
    let id = id.into_inner();
    let uid = user.user_id;
    let limit = in_range("limit", q.limit, 50, 1, 200)?;
    let cached = p
        .cache
        .get_or_load(
            &user_scope(uid),
            &DETAIL,
            &keys::conversation(id, limit),
            || async {
                let found = queries::get_conversation(&p.db, uid, id, limit).await?;
                Ok(found.map(|(summary, messages)| ConversationDetail::new(summary, messages)))
            },
        )
        .await?;
    Ok(respond::cached(&req, &cached))
}

/// Delete a conversation and its messages.
#[utoipa::path(delete, path = "/api/conversations/{id}", params(("id" = Uuid, Path)),
    responses((status = 204), (status = 404), (status = 401)))]
#[tracing::instrument(skip_all, fields(user_id = %user.user_id))]
async fn delete_conversation(
    p: web::Data<Platform>,
    user: AuthUser,
    id: web::Path<Uuid>,
) -> Result<HttpResponse, ApiError> {
    if !queries::delete_conversation(&p.db, user.user_id, id.into_inner()).await? {
        return Err(ApiError::not_found());
    }
    p.cache.invalidate(&user_scope(user.user_id)).await;
    Ok(HttpResponse::NoContent().finish())
}

/// Send a message; the assistant replies (from the AI-response cache when the
/// same message was sent before). If the model fails, the message is kept and
/// the answer is 502 (or 504 on timeout).
#[utoipa::path(post, path = "/api/conversations/{id}/messages", params(("id" = Uuid, Path)), request_body = PostMessage,
    responses((status = 201, body = Exchange), (status = 400), (status = 404), (status = 401),
        (status = 502, body = kai_shared::http::errors::Problem), (status = 504, body = kai_shared::http::errors::Problem)))]
#[tracing::instrument(skip_all, fields(user_id = %user.user_id))]
async fn post_message(
    p: web::Data<Platform>,
    llm: web::Data<Llm>,
    user: AuthUser,
    id: web::Path<Uuid>,
    body: web::Json<PostMessage>,
) -> Result<HttpResponse, ApiError> {
    let mut msg = body.into_inner();
    msg.validate()?;
    let (uid, id) = (user.user_id, id.into_inner());
    let user_message = queries::append_message(&p.db, uid, id, "user", &msg.content)
        .await?
        .ok_or_else(ApiError::not_found)?;
    // Visible at once: the model may fail or the client may leave, and the
    // message is stored either way.
    p.cache.invalidate(&user_scope(uid)).await;

    let reply = assistant::reply(
        &p,
        &llm,
        uid,
        msg.communication_style.as_deref(),
        &msg.content,
    )
    .await?;
    let assistant_message = queries::append_message(&p.db, uid, id, "assistant", &reply.content)
        .await?
        .ok_or_else(ApiError::not_found)?;
    p.cache.invalidate(&user_scope(uid)).await;
    Ok(HttpResponse::Created().json(Exchange {
        user_message,
        assistant_message,
        cached: reply.cached,
    }))
}

/// Import up to 1,000 messages at once: all or none, in one INSERT.
#[utoipa::path(post, path = "/api/conversations/{id}/messages/batch", params(("id" = Uuid, Path)), request_body = BatchRequest,
    responses((status = 201, body = BatchInserted), (status = 400), (status = 404), (status = 401), (status = 413)))]
#[tracing::instrument(skip_all, fields(user_id = %user.user_id))]
async fn post_batch(
    p: web::Data<Platform>,
    user: AuthUser,
    id: web::Path<Uuid>,
    body: web::Json<BatchRequest>,
) -> Result<HttpResponse, ApiError> {
    let batch = body.into_inner();
    batch.validate()?;
    let inserted = queries::insert_batch(&p.db, user.user_id, id.into_inner(), &batch.messages)
        .await?
        .ok_or_else(ApiError::not_found)?;
    p.cache.invalidate(&user_scope(user.user_id)).await;
    Ok(HttpResponse::Created().json(BatchInserted { inserted }))
}
